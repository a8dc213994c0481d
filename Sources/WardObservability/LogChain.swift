import Foundation

/// The hash chain of the connection log (`log_chain: true`) and its signed checkpoints, for
/// both the writer and `ward audit verify`. Pure: the caller supplies SHA-256 and the signature
/// check.
///
/// Every line carries `prev`, the SHA-256 of the line before it (of the previous file's last
/// line for a file's first line). Every `checkpoint` line is signed with Ward's own SVID key
/// over its kind, time and `prev`, so it seals every line before it: a `genesis` checkpoint
/// opens each file, `interval` ones follow every N lines or T seconds, `start` marks a restart
/// and `close` ends a file at shutdown and rotation.
public enum LogChain {
    public static let genesisDigest = String(repeating: "0", count: 64)

    /// Appends `"prev"` to a finished JSON object line (with or without its newline); returns
    /// the chained line (with newline) and its digest, the next line's `prev`.
    public static func link(_ line: String, previous: String, sha256: (Data) -> String) -> (
        line: String, digest: String
    ) {
        var body = line
        if body.hasSuffix("\n") { body.removeLast() }
        if body.hasSuffix("}") { body.removeLast() }
        body += ",\"prev\":\"\(previous)\"}"
        return (body + "\n", sha256(Data(body.utf8)))
    }

    /// What a checkpoint says, all of it signed.
    public struct SealFields: Sendable, Equatable {
        public var kind: String
        public var timestamp: String
        /// Counts checkpoints along the chain, across files and restarts: a removed one leaves a gap.
        public var seq: Int64
        /// The writer's `log_checkpoint_lines`: no run of lines between checkpoints is longer.
        public var every: Int64
        public var intervalMilliseconds: Int64
        /// On `start`: lines after the last checkpoint that Ward found in the file; it does not
        /// vouch for them.
        public var unsealedBefore: Int64
        public var prev: String

        public init(
            kind: String, timestamp: String, seq: Int64, every: Int64, intervalMilliseconds: Int64,
            unsealedBefore: Int64 = 0, prev: String
        ) {
            self.kind = kind
            self.timestamp = timestamp
            self.seq = seq
            self.every = every
            self.intervalMilliseconds = intervalMilliseconds
            self.unsealedBefore = unsealedBefore
            self.prev = prev
        }

        /// The bytes the signature covers.
        public var signedBytes: Data {
            Data(
                ("ward-log-checkpoint/2\n\(kind)\n\(timestamp)\n\(seq)\n\(every)\n\(intervalMilliseconds)\n"
                    + "\(unsealedBefore)\n\(prev)\n").utf8)
        }
    }

    /// Where the previous file of a chain ended, to check the next one continues it.
    public struct Continuation: Sendable, Equatable {
        public var head: String
        public var seq: Int64
        public init(head: String, seq: Int64) {
            self.head = head
            self.seq = seq
        }
    }

    /// A checkpoint as read back from a log, for the caller to check its signature.
    public struct Seal: Sendable {
        public var line: Int
        public var fields: SealFields
        public var signer: String
        /// DER certificates, leaf first.
        public var certificates: [Data]
        public var signature: Data
        public var timestamp: String { fields.timestamp }
        public var input: Data { fields.signedBytes }
    }

    public enum SealCheck: Sendable, Equatable {
        case valid
        case invalid(String)
    }

    public struct Verdict: Sendable, Equatable {
        /// Lines read.
        public var lines: Int
        /// The first line the chain shows altered (or after which lines are missing), 1-based.
        public var brokenLine: Int?
        public var message: String
        /// SHA-256 of the last line: a later file's first `prev`.
        public var head: String?
        /// The last checkpoint's sequence number: a later file's checkpoints continue it.
        public var lastSeq: Int64?
        /// Checkpoints whose signature verified.
        public var seals = 0
        /// Lines after the last checkpoint: not protected yet against edits with recomputed hashes.
        public var unsealed = 0
        /// Lines Ward found unsealed when it restarted (after a crash or kill) and did not vouch for.
        public var unsealedAtRestart = 0
        /// The file ends with a `close` checkpoint.
        public var closed = false
        public var signers: [String] = []
    }

    /// Checks a chained log. `previous` is where the previous file ended, when that file is
    /// verified too; `requireClose` refuses a file that does not end with a `close` checkpoint
    /// (every rotated file does, so a cut tail shows); `requireSealed` refuses lines left
    /// unsealed at a restart.
    public static func verify(
        _ data: Data, previous: Continuation? = nil, requireClose: Bool = false, requireSealed: Bool = false,
        sha256: (Data) -> String, checkSeal: (Seal) -> SealCheck
    ) -> Verdict {
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard !lines.isEmpty else { return Verdict(lines: 0, brokenLine: 1, message: "empty log", head: nil) }
        func broken(_ line: Int, _ message: String) -> Verdict {
            Verdict(lines: lines.count, brokenLine: line, message: message, head: nil)
        }
        let digests = lines.map { sha256(Data($0)) }
        var objects: [[String: Any]] = []
        var prevs: [String] = []
        for (index, line) in lines.enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                return broken(index + 1, "line \(index + 1) is not a JSON object")
            }
            guard let prev = object["prev"] as? String else {
                return broken(index + 1, "line \(index + 1) has no prev field (was log_chain on?)")
            }
            objects.append(object)
            prevs.append(prev)
        }
        if let previous, prevs[0] != previous.head {
            return broken(1, "line 1 does not follow the previous file: lines were removed between them")
        }
        // The link into line i+1 holds when its prev is the digest of line i.
        func holds(_ index: Int) -> Bool { prevs[index + 1] == digests[index] }
        for index in 0..<(lines.count - 1) where !holds(index) {
            let line = index + 1
            // If the following link fails too, line i+1 itself changed (its prev and so its hash).
            if index + 2 < lines.count, !holds(index + 1) {
                return broken(
                    line + 1,
                    "line \(line + 1) was altered (its prev does not match line \(line), "
                        + "and line \(line + 2) does not match it)")
            }
            return broken(
                line,
                "chain broken after line \(line): line \(line) was altered, "
                    + "or lines between \(line) and \(line + 1) were removed")
        }
        if objects[0]["event"] as? String != "checkpoint" || objects[0]["kind"] as? String != "genesis" {
            return broken(
                1,
                "line 1 is not a signed genesis checkpoint: the start of the file was removed "
                    + "(or it was written without log_chain)")
        }
        var verdict = Verdict(lines: lines.count, brokenLine: nil, message: "", head: digests.last)
        var last: SealFields? = nil
        var lastSeq = previous?.seq
        // Lines since the last checkpoint, with the latest time among them.
        var run = 0
        var runLatest: (line: Int, ms: Int64)? = nil
        for (index, object) in objects.enumerated() {
            let line = index + 1
            guard object["event"] as? String == "checkpoint" else {
                run += 1
                if let last, run > last.every {
                    return broken(
                        line,
                        "\(run) lines after the checkpoint before line \(line - run + 1), more than its "
                            + "log_checkpoint_lines (\(last.every)): a checkpoint was removed")
                }
                if let ms = (object["ts"] as? String).flatMap(epochMilliseconds), ms > runLatest?.ms ?? .min {
                    runLatest = (line, ms)
                }
                continue
            }
            guard let seal = seal(object, line: line, prev: prevs[index]) else {
                return broken(line, "line \(line): checkpoint is malformed")
            }
            if case .invalid(let why) = checkSeal(seal) {
                return broken(
                    line,
                    "line \(line): checkpoint signature does not verify (\(why)): lines up to \(line) were altered")
            }
            if let lastSeq, seal.fields.seq != lastSeq + 1 {
                return broken(
                    line,
                    "line \(line): checkpoint \(seal.fields.seq) follows checkpoint \(lastSeq): a checkpoint was removed"
                )
            }
            guard let sealedAt = epochMilliseconds(seal.timestamp) else {
                return broken(line, "line \(line): checkpoint time is malformed")
            }
            // Clocks step, but not by more than a second between a line and its seal.
            if let latest = runLatest, latest.ms > sealedAt + 1000 {
                return broken(
                    latest.line, "line \(latest.line) is dated after the checkpoint at line \(line) that seals it")
            }
            if let last, let before = epochMilliseconds(last.timestamp), sealedAt + 1000 < before {
                return broken(line, "line \(line): checkpoint times go backwards")
            }
            if seal.fields.kind == "start", run > 0 {
                verdict.unsealedAtRestart += run
            }
            verdict.seals += 1
            if !verdict.signers.contains(seal.signer) { verdict.signers.append(seal.signer) }
            last = seal.fields
            lastSeq = seal.fields.seq
            run = 0
            runLatest = nil
        }
        verdict.lastSeq = lastSeq
        verdict.unsealed = run
        verdict.closed = run == 0 && last?.kind == "close"
        if requireClose, !verdict.closed {
            return broken(
                lines.count,
                "the file does not end with a close checkpoint: its tail was cut (or Ward is still writing it)")
        }
        if requireSealed, verdict.unsealedAtRestart > 0 {
            return broken(
                lines.count,
                "\(verdict.unsealedAtRestart) line(s) were not sealed before a restart: Ward did not vouch for them")
        }
        var notes: [String] = []
        if verdict.unsealedAtRestart > 0 {
            notes.append("\(verdict.unsealedAtRestart) line(s) left unsealed at a restart are not sealed")
        }
        notes.append(
            verdict.closed ? "closed" : "\(verdict.unsealed) line(s) after the last checkpoint are not sealed yet")
        verdict.message =
            "\(lines.count) lines, chain intact, \(verdict.seals) checkpoint(s) signed by "
            + verdict.signers.joined(separator: ", ") + "; " + notes.joined(separator: "; ")
        return verdict
    }

    /// Milliseconds since 1970 of Ward's `ts` format, `2026-11-30T00:12:34.567Z` (or whole seconds).
    public static func epochMilliseconds(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count == 24 || bytes.count == 20, bytes.last == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var value: Int64 = 0
            for byte in bytes[range] {
                guard (48...57).contains(byte) else { return nil }
                value = value * 10 + Int64(byte - 48)
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        let millis = bytes.count == 24 ? number(20..<23) : 0
        guard let millis else { return nil }
        // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis
    }

    private static func seal(_ object: [String: Any], line: Int, prev: String) -> Seal? {
        func integer(_ key: String) -> Int64? { (object[key] as? Int).map(Int64.init) }
        guard let kind = object["kind"] as? String, let timestamp = object["ts"] as? String,
            let seq = integer("seq"), let every = integer("every"), every > 0,
            let interval = integer("interval_ms"),
            let signer = object["signer"] as? String, let certificates = object["certs"] as? [String],
            let signature = (object["sig"] as? String).flatMap({ Data(base64Encoded: $0) })
        else { return nil }
        let ders = certificates.compactMap { Data(base64Encoded: $0) }
        guard !ders.isEmpty, ders.count == certificates.count else { return nil }
        let fields = SealFields(
            kind: kind, timestamp: timestamp, seq: seq, every: every, intervalMilliseconds: interval,
            unsealedBefore: integer("unsealed_before") ?? 0, prev: prev)
        return Seal(line: line, fields: fields, signer: signer, certificates: ders, signature: signature)
    }
}
