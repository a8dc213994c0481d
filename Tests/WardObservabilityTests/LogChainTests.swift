import Foundation
import Testing
import WardObservability

/// A stand-in digest for the pure chain logic: distinct per input, stable.
private func digest(_ data: Data) -> String { String(data.hashValue, radix: 16) + "-\(data.count)" }

/// A stand-in signature: only the writer below knows to make it (the digest of the input, salted).
private func sign(_ data: Data) -> String { Data(digest(data + Data("key".utf8)).utf8).base64EncodedString() }

private func checkSeal(_ seal: LogChain.Seal) -> LogChain.SealCheck {
    seal.signature.base64EncodedString() == sign(seal.input) ? .valid : .invalid("bad signature")
}

@Suite struct LogChainTests {
    /// Writes lines the way the log writer does: `checkpoint:KIND` entries become signed
    /// checkpoints, numbered from `seq`, with `every` as their log_checkpoint_lines.
    func chain(
        _ entries: [String], previous start: String = LogChain.genesisDigest, seq first: Int64 = 0, every: Int64 = 1000,
        at timestamp: String = "2026-11-29T00:00:00.000Z"
    ) -> [String] {
        var previous = start
        var seq = first
        return entries.map { entry in
            var line = "{\"ts\":\"\(timestamp)\",\(entry)}"
            if entry.hasPrefix("checkpoint:") {
                let fields = LogChain.SealFields(
                    kind: String(entry.dropFirst("checkpoint:".count)), timestamp: timestamp, seq: seq, every: every,
                    intervalMilliseconds: 60_000, prev: previous)
                seq += 1
                line =
                    "{\"ts\":\"\(timestamp)\",\"event\":\"checkpoint\",\"kind\":\"\(fields.kind)\",\"seq\":\(fields.seq),"
                    + "\"every\":\(every),\"interval_ms\":60000,\"signer\":\"spiffe://example.org/ward\","
                    + "\"certs\":[\"AA==\"],\"sig\":\"\(sign(fields.signedBytes))\"}"
            }
            let (linked, next) = LogChain.link(line, previous: previous, sha256: digest)
            previous = next
            return String(linked.dropLast())
        }
    }

    func numbered(_ count: Int) -> [String] { (1...count).map { "\"n\":\($0)" } }

    func verify(_ lines: [String], previous: LogChain.Continuation? = nil, requireClose: Bool = false)
        -> LogChain.Verdict
    {
        LogChain.verify(
            Data((lines.joined(separator: "\n") + "\n").utf8), previous: previous, requireClose: requireClose,
            requireSealed: requireClose, sha256: digest, checkSeal: checkSeal)
    }

    @Test func sealedAndClosedChainVerifies() {
        let verdict = verify(chain(["checkpoint:genesis"] + numbered(5) + ["checkpoint:close"]))
        #expect(verdict.brokenLine == nil && verdict.lines == 7 && verdict.seals == 2 && verdict.closed)
        #expect(verdict.signers == ["spiffe://example.org/ward"])
    }

    @Test func linesAfterTheLastCheckpointAreReportedUnsealed() {
        let verdict = verify(chain(["checkpoint:genesis"] + numbered(3) + ["checkpoint:interval"] + numbered(2)))
        #expect(verdict.brokenLine == nil && verdict.unsealed == 2 && !verdict.closed)
        #expect(verdict.message.contains("2 line(s) after the last checkpoint are not sealed yet"))
    }

    @Test func anEditedBodyNamesItsLine() {
        var lines = chain(["checkpoint:genesis"] + numbered(6))
        lines[3] = lines[3].replacingOccurrences(of: "\"n\":3", with: "\"n\":4")
        #expect(verify(lines).brokenLine == 4)
    }

    @Test func anEditedPrevNamesItsLine() {
        var lines = chain(["checkpoint:genesis"] + numbered(6))
        lines[3] = lines[3].replacingOccurrences(of: "\"prev\":\"", with: "\"prev\":\"f")
        #expect(verify(lines).brokenLine == 4)
    }

    @Test func aRemovedLineIsDetected() {
        var lines = chain(["checkpoint:genesis"] + numbered(6))
        lines.remove(at: 3)
        let verdict = verify(lines)
        #expect(verdict.brokenLine == 3)
        #expect(verdict.message.contains("removed"))
    }

    @Test func removedFirstLinesAreDetected() {
        let lines = chain(["checkpoint:genesis"] + numbered(6))
        #expect(verify(Array(lines.dropFirst(2))).brokenLine == 1)
        // Forging a new genesis needs the key: an unsigned one does not verify.
        let forged = chain(["checkpoint:genesis"] + numbered(3))
        var unsigned = forged
        unsigned[0] = unsigned[0].replacingOccurrences(of: "\"sig\":\"", with: "\"sig\":\"AA")
        #expect(verify(unsigned).brokenLine == 1)
    }

    @Test func aRewrittenChainFailsAtTheNextCheckpoint() {
        // Line 3 changed and every later prev recomputed: the chain links, the seal does not.
        let original = chain(["checkpoint:genesis"] + numbered(4) + ["checkpoint:interval"] + numbered(2))
        var entries = ["checkpoint:genesis"] + numbered(4)
        entries[2] = "\"n\":99"
        var rewritten = chain(entries)
        let head = digest(Data(rewritten.last!.utf8))
        // The attacker keeps the old checkpoint line but must re-link it to the new chain.
        let oldSeal = original[5]
        let relinked = oldSeal.replacing(#/"prev":"[^"]*"/#, with: "\"prev\":\"\(head)\"")
        rewritten.append(relinked)
        rewritten += chain(numbered(2), previous: digest(Data(relinked.utf8)))
        let verdict = verify(rewritten)
        #expect(verdict.brokenLine == 6)
        #expect(verdict.message.contains("signature does not verify"))
    }

    @Test func aCutTailShowsWhenAFileMustBeClosed() {
        let lines = chain(["checkpoint:genesis"] + numbered(3) + ["checkpoint:interval"] + numbered(2))
        #expect(verify(lines).brokenLine == nil)
        #expect(verify(lines, requireClose: true).brokenLine == 7)
    }

    @Test func aFileMustFollowThePreviousOne() {
        let first = chain(["checkpoint:genesis"] + numbered(2) + ["checkpoint:close"])
        let head = digest(Data(first.last!.utf8))
        let second = chain(["checkpoint:genesis"] + numbered(2), previous: head, seq: 2)
        #expect(verify(second, previous: .init(head: head, seq: 1)).brokenLine == nil)
        #expect(verify(second, previous: .init(head: "other", seq: 1)).brokenLine == 1)
        // The previous file's last checkpoint was removed: the numbering shows it.
        #expect(verify(second, previous: .init(head: head, seq: 0)).brokenLine == 1)
    }

    @Test func aRemovedCheckpointShowsInTheNumbering() {
        // Checkpoint 1 is missing; checkpoint 2, signed over the chain as it is, follows checkpoint 0.
        let head = chain(["checkpoint:genesis"] + numbered(2))
        let lines = head + chain(["checkpoint:interval"], previous: digest(Data(head.last!.utf8)), seq: 2)
        let verdict = verify(lines)
        #expect(verdict.brokenLine == 4)
        #expect(verdict.message.contains("a checkpoint was removed"))
    }

    @Test func aRunLongerThanTheWritersLimitShowsARemovedCheckpoint() {
        // Checkpoints every 3 lines; the last one removed leaves 5 lines in a row.
        var lines = chain(["checkpoint:genesis"] + numbered(3) + ["checkpoint:interval"] + numbered(2), every: 3)
        lines.remove(at: 4)
        lines = relink(lines)
        let verdict = verify(lines)
        #expect(verdict.brokenLine == 5)
        #expect(verdict.message.contains("a checkpoint was removed"))
    }

    @Test func linesLeftUnsealedAtARestartAreReported() {
        let lines = chain(
            ["checkpoint:genesis"] + numbered(2) + ["checkpoint:start"] + numbered(1) + ["checkpoint:close"])
        let verdict = verify(lines)
        #expect(verdict.brokenLine == nil && verdict.unsealedAtRestart == 2)
        #expect(verdict.message.contains("2 line(s) left unsealed at a restart are not sealed"))
        #expect(verify(lines, requireClose: true).brokenLine != nil)
    }

    @Test func aLineDatedAfterItsCheckpointIsRefused() {
        // A line 5 s newer than the checkpoint that seals it, everything else signed correctly.
        let dated =
            chain(["checkpoint:genesis"])
            + chain(
                numbered(1), previous: digest(Data(chain(["checkpoint:genesis"])[0].utf8)),
                at: "2026-11-29T00:00:05.000Z")
        let sealed = dated + chain(["checkpoint:close"], previous: digest(Data(dated.last!.utf8)), seq: 1)
        let verdict = verify(sealed)
        #expect(verdict.brokenLine == 2)
        #expect(verdict.message.contains("dated after the checkpoint"))
    }

    @Test func timestampsParse() {
        #expect(LogChain.epochMilliseconds("1970-01-01T00:00:00.000Z") == 0)
        #expect(LogChain.epochMilliseconds("2026-11-30T00:12:34.567Z") == 1_795_997_554_567)
        #expect(LogChain.epochMilliseconds("2000-02-29T23:59:59Z") == 951_868_799_000)
        #expect(LogChain.epochMilliseconds("2026-13-30T00:12:34.567Z") == nil)
        #expect(LogChain.epochMilliseconds("garbage") == nil)
    }

    /// Recomputes every prev after a line was removed, as an attacker without the key would.
    func relink(_ lines: [String]) -> [String] {
        var previous: String?
        return lines.map { line in
            var text = line
            if let previous { text = text.replacing(#/"prev":"[^"]*"/#, with: "\"prev\":\"\(previous)\"") }
            previous = digest(Data(text.utf8))
            return text
        }
    }

    @Test func unchainedOrBrokenLinesAreReported() {
        #expect(verify(["{\"n\":1}"]).brokenLine == 1)
        #expect(verify(chain(["checkpoint:genesis"]) + ["not json"]).brokenLine == 2)
        #expect(verify(chain(numbered(3))).brokenLine == 1)
    }
}
