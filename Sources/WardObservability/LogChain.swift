import Foundation

/// Checks a hash-chained connection log (`log_chain: true`): every line's `prev` must be the
/// SHA-256 of the line before it. Pure: the caller supplies the hash function.
public enum LogChain {
    public struct Verdict: Sendable, Equatable {
        /// Lines read.
        public var lines: Int
        /// The first line the chain shows altered (or after which lines are missing), 1-based.
        public var brokenLine: Int?
        public var message: String
        /// SHA-256 of the last line: anchor it elsewhere to protect the tail too.
        public var head: String?
    }

    public static func verify(_ data: Data, sha256: (Data) -> String) -> Verdict {
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard !lines.isEmpty else { return Verdict(lines: 0, brokenLine: nil, message: "empty log", head: nil) }
        let digests = lines.map { sha256(Data($0)) }
        var prevs: [String?] = []
        for (index, line) in lines.enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                return Verdict(
                    lines: lines.count, brokenLine: index + 1, message: "line \(index + 1) is not a JSON object",
                    head: nil)
            }
            guard let prev = object["prev"] as? String else {
                return Verdict(
                    lines: lines.count, brokenLine: index + 1,
                    message: "line \(index + 1) has no prev field (was log_chain on?)", head: nil)
            }
            prevs.append(prev)
        }
        // The link into line i+1 holds when its prev is the digest of line i.
        func holds(_ index: Int) -> Bool { prevs[index + 1] == digests[index] }
        for index in 0..<(lines.count - 1) where !holds(index) {
            let line = index + 1
            // If the following link fails too, line i+1 itself changed (its prev and so its hash).
            if index + 2 < lines.count, !holds(index + 1) {
                return Verdict(
                    lines: lines.count, brokenLine: line + 1,
                    message: "line \(line + 1) was altered (its prev does not match line \(line), "
                        + "and line \(line + 2) does not match it)", head: nil)
            }
            return Verdict(
                lines: lines.count, brokenLine: line,
                message: "chain broken after line \(line): line \(line) was altered, "
                    + "or lines between \(line) and \(line + 1) were removed", head: nil)
        }
        return Verdict(
            lines: lines.count, brokenLine: nil, message: "\(lines.count) lines, chain intact", head: digests.last)
    }
}
