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

    /// The bytes a checkpoint signs.
    public static func sealInput(kind: String, timestamp: String, prev: String) -> Data {
        Data("ward-log-checkpoint/1\n\(kind)\n\(timestamp)\n\(prev)\n".utf8)
    }

    /// A checkpoint as read back from a log, for the caller to check its signature.
    public struct Seal: Sendable {
        public var line: Int
        public var kind: String
        public var timestamp: String
        public var prev: String
        public var signer: String
        /// DER certificates, leaf first.
        public var certificates: [Data]
        public var signature: Data
        public var input: Data { LogChain.sealInput(kind: kind, timestamp: timestamp, prev: prev) }
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
        /// Checkpoints whose signature verified.
        public var seals = 0
        /// Lines after the last checkpoint: not protected yet against edits with recomputed hashes.
        public var unsealed = 0
        /// The file ends with a `close` checkpoint.
        public var closed = false
        public var signers: [String] = []
    }

    /// Checks a chained log. `previousHead` is the digest of the previous file's last line,
    /// when that file is verified too; `requireClose` refuses a file that does not end with a
    /// `close` checkpoint (every rotated file does, so a cut tail shows).
    public static func verify(
        _ data: Data, previousHead: String? = nil, requireClose: Bool = false, sha256: (Data) -> String,
        checkSeal: (Seal) -> SealCheck
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
        if let previousHead, prevs[0] != previousHead {
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
        var verdict = Verdict(lines: lines.count, brokenLine: nil, message: "", head: digests.last)
        var lastSeal = 0
        for (index, object) in objects.enumerated() where object["event"] as? String == "checkpoint" {
            let line = index + 1
            guard let seal = seal(object, line: line, prev: prevs[index]) else {
                return broken(line, "line \(line): checkpoint is malformed")
            }
            if case .invalid(let why) = checkSeal(seal) {
                return broken(
                    line,
                    "line \(line): checkpoint signature does not verify (\(why)): lines up to \(line) were altered")
            }
            verdict.seals += 1
            if !verdict.signers.contains(seal.signer) { verdict.signers.append(seal.signer) }
            lastSeal = line
        }
        if objects[0]["event"] as? String != "checkpoint" || objects[0]["kind"] as? String != "genesis" {
            return broken(
                1,
                "line 1 is not a signed genesis checkpoint: the start of the file was removed "
                    + "(or it was written without log_chain)")
        }
        verdict.unsealed = lines.count - lastSeal
        verdict.closed = lastSeal == lines.count && objects[lastSeal - 1]["kind"] as? String == "close"
        if requireClose, !verdict.closed {
            return broken(
                lines.count,
                "the file does not end with a close checkpoint: its tail was cut (or Ward is still writing it)")
        }
        verdict.message =
            "\(lines.count) lines, chain intact, \(verdict.seals) checkpoint(s) signed by "
            + verdict.signers.joined(separator: ", ")
            + (verdict.closed
                ? "; closed"
                : "; \(verdict.unsealed) line(s) after the last checkpoint are not sealed yet")
        return verdict
    }

    private static func seal(_ object: [String: Any], line: Int, prev: String) -> Seal? {
        guard let kind = object["kind"] as? String, let timestamp = object["ts"] as? String,
            let signer = object["signer"] as? String, let certificates = object["certs"] as? [String],
            let signature = (object["sig"] as? String).flatMap({ Data(base64Encoded: $0) })
        else { return nil }
        let ders = certificates.compactMap { Data(base64Encoded: $0) }
        guard !ders.isEmpty, ders.count == certificates.count else { return nil }
        return Seal(
            line: line, kind: kind, timestamp: timestamp, prev: prev, signer: signer, certificates: ders,
            signature: signature)
    }
}
