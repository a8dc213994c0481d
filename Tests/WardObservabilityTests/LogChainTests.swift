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
    /// Writes lines the way the log writer does: `checkpoint:KIND` entries become signed checkpoints.
    func chain(_ entries: [String], previous start: String = LogChain.genesisDigest) -> [String] {
        var previous = start
        return entries.map { entry in
            var line = "{\(entry)}"
            if entry.hasPrefix("checkpoint:") {
                let kind = String(entry.dropFirst("checkpoint:".count))
                let input = LogChain.sealInput(kind: kind, timestamp: "2026-11-29T00:00:00.000Z", prev: previous)
                line =
                    "{\"ts\":\"2026-11-29T00:00:00.000Z\",\"event\":\"checkpoint\",\"kind\":\"\(kind)\","
                    + "\"signer\":\"spiffe://example.org/ward\",\"certs\":[\"AA==\"],\"sig\":\"\(sign(input))\"}"
            }
            let (linked, next) = LogChain.link(line, previous: previous, sha256: digest)
            previous = next
            return String(linked.dropLast())
        }
    }

    func numbered(_ count: Int) -> [String] { (1...count).map { "\"n\":\($0)" } }

    func verify(_ lines: [String], previousHead: String? = nil, requireClose: Bool = false) -> LogChain.Verdict {
        LogChain.verify(
            Data((lines.joined(separator: "\n") + "\n").utf8), previousHead: previousHead, requireClose: requireClose,
            sha256: digest, checkSeal: checkSeal)
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
        let second = chain(["checkpoint:genesis"] + numbered(2), previous: head)
        #expect(verify(second, previousHead: head).brokenLine == nil)
        #expect(verify(second, previousHead: "other").brokenLine == 1)
    }

    @Test func unchainedOrBrokenLinesAreReported() {
        #expect(verify(["{\"n\":1}"]).brokenLine == 1)
        #expect(verify(chain(["checkpoint:genesis"]) + ["not json"]).brokenLine == 2)
        #expect(verify(chain(numbered(3))).brokenLine == 1)
    }
}
