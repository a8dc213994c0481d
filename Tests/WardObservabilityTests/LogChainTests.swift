import Foundation
import Testing
import WardObservability

/// A stand-in digest for the pure chain logic: distinct per input, stable.
private func digest(_ data: Data) -> String { String(data.hashValue, radix: 16) + "-\(data.count)" }

@Suite struct LogChainTests {
    func chain(_ bodies: [String]) -> [String] {
        var previous = String(repeating: "0", count: 64)
        return bodies.map { body in
            let line = "{\(body),\"prev\":\"\(previous)\"}"
            previous = digest(Data(line.utf8))
            return line
        }
    }

    func verify(_ lines: [String]) -> LogChain.Verdict {
        LogChain.verify(Data((lines.joined(separator: "\n") + "\n").utf8), sha256: digest)
    }

    @Test func intactChain() {
        let verdict = verify(chain((1...5).map { "\"n\":\($0)" }))
        #expect(verdict.brokenLine == nil && verdict.lines == 5)
    }

    @Test func anEditedBodyNamesItsLine() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines[2] = lines[2].replacingOccurrences(of: "\"n\":3", with: "\"n\":4")
        #expect(verify(lines).brokenLine == 3)
    }

    @Test func anEditedPrevNamesItsLine() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines[3] = lines[3].replacingOccurrences(of: "\"prev\":\"", with: "\"prev\":\"f")
        #expect(verify(lines).brokenLine == 4)
    }

    @Test func aRemovedLineIsDetected() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines.remove(at: 3)
        let verdict = verify(lines)
        #expect(verdict.brokenLine == 3)
        #expect(verdict.message.contains("removed"))
    }

    @Test func unchainedOrBrokenLinesAreReported() {
        #expect(verify(["{\"n\":1}"]).brokenLine == 1)
        #expect(verify(chain(["\"n\":1"]) + ["not json"]).brokenLine == 2)
    }
}

@Suite struct RuleSuggesterTests {
    func record(_ event: String, _ peer: String, _ listener: String, enforced: Bool? = nil, ts: String = "t")
        -> [String: Any]
    {
        var r: [String: Any] = ["event": event, "peer_id": peer, "listener": listener, "ts": ts]
        if let enforced { r["enforced"] = enforced }
        return r
    }

    @Test func allowsExactlyWhatWasSeen() {
        var suggester = RuleSuggester()
        suggester.observe(record("allow", "spiffe://example.org/a/web", "orders", ts: "2026-01-01"))
        suggester.observe(record("allow", "spiffe://example.org/a/web", "orders", ts: "2026-01-03"))
        suggester.observe(record("allow", "spiffe://example.org/a/web", "admin", ts: "2026-01-02"))
        suggester.observe(record("deny", "spiffe://example.org/a/db", "orders", enforced: false))
        suggester.observe(record("deny", "spiffe://example.org/a/evil", "orders", enforced: true))
        suggester.observe(record("close", "spiffe://example.org/a/x", "orders"))
        let yaml = suggester.yaml(source: "log")
        #expect(yaml.contains("default: deny"))
        #expect(yaml.contains("from: [\"spiffe://example.org/a/web\"]\n    to: [\"admin\", \"orders\"]"))
        #expect(yaml.contains("# 3 connection(s), first 2026-01-01, last 2026-01-03"))
        #expect(yaml.contains("spiffe://example.org/a/db"))
        #expect(!yaml.contains("evil") && !yaml.contains("/a/x"))
    }

    @Test func minimumCountAndGeneralisation() {
        var suggester = RuleSuggester(minimumCount: 2, generalize: true)
        for peer in ["spiffe://example.org/ns/sa/one", "spiffe://example.org/ns/sa/two"] {
            suggester.observe(record("allow", peer, "orders"))
            suggester.observe(record("allow", peer, "orders"))
        }
        suggester.observe(record("allow", "spiffe://example.org/ns/sa/rare", "admin"))
        let yaml = suggester.yaml(source: "log")
        #expect(yaml.contains("from: [\"spiffe://example.org/ns/sa/*\"]"))
        #expect(!yaml.contains("rare"))
    }
}
