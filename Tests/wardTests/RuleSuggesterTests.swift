import Foundation
import Testing

@testable import ward

@Suite struct RuleSuggesterTests {
    func record(_ event: String, _ peer: String, _ listener: String, enforced: Bool? = nil, ts: String = "t")
        -> [String: Any]
    {
        var r: [String: Any] = ["event": event, "peer_id": peer, "listener": listener, "ts": ts]
        if let enforced { r["enforced"] = enforced }
        return r
    }

    @Test func outboundConnectionsSuggestNoRules() {
        // Ward calling out (an outbound entry) is not a peer calling a listener: rules do not apply.
        var suggester = RuleSuggester()
        var outbound = record("allow", "spiffe://example.org/a/orders", "orders-api")
        outbound["direction"] = "outbound"
        suggester.observe(outbound)
        var inbound = record("allow", "spiffe://example.org/a/web", "orders")
        inbound["direction"] = "inbound"
        suggester.observe(inbound)
        let yaml = suggester.yaml(source: "log")
        #expect(!yaml.contains("orders-api") && !yaml.contains("/a/orders"))
        #expect(yaml.contains("spiffe://example.org/a/web"))
        #expect(suggester.eventsRead == 1)
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
