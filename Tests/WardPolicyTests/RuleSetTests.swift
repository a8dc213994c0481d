import Testing
import WardIdentity
import WardPolicy

@Suite struct RuleSetTests {
    func id(_ text: String) -> SPIFFEID { try! SPIFFEID(parsing: text) }
    let web = "spiffe://example.org/ns/prod/sa/web"
    let batch = "spiffe://example.org/ns/dev/sa/batch"

    func rules(_ list: [Rule]) -> RuleSet { rules(.deny, list) }

    func rules(_ defaultAction: RuleAction, _ list: [Rule]) -> RuleSet {
        RuleSet(compiling: RuleSource(defaultAction: defaultAction, rules: list), listeners: ["orders", "admin"])
    }

    @Test func defaultDecidesWhenNothingMatches() {
        #expect(rules(.deny, []).decide(peer: id(web), listenerIndex: 0) == Decision(action: .deny, rule: "default"))
        #expect(rules(.allow, []).decide(peer: id(web), listenerIndex: 0) == Decision(action: .allow, rule: "default"))
    }

    @Test func allowAppliesOnlyToItsListeners() {
        let set = rules([Rule(name: "web", action: .allow, from: [id(web)], to: .named(["orders"]))])
        #expect(set.decide(peer: id(web), listenerIndex: 0) == Decision(action: .allow, rule: "web"))
        #expect(set.decide(peer: id(web), listenerIndex: 1).rule == "default")
        #expect(set.decide(peer: id(batch), listenerIndex: 0).rule == "default")
    }

    @Test func denyWinsWhateverTheOrder() {
        let allow = Rule(name: "allow-all", action: .allow, from: [id(web)], to: .all)
        let deny = Rule(name: "deny-admin", action: .deny, from: [id(web)], to: .named(["admin"]))
        for order in [[allow, deny], [deny, allow]] {
            let set = rules(.allow, order)
            #expect(set.decide(peer: id(web), listenerIndex: 1) == Decision(action: .deny, rule: "deny-admin"))
            #expect(set.decide(peer: id(web), listenerIndex: 0) == Decision(action: .allow, rule: "allow-all"))
        }
    }

    @Test func firstMatchingRuleOfTheWinningActionIsNamed() {
        let set = rules([
            Rule(name: "first", action: .allow, from: [id(web)], to: .all),
            Rule(name: "second", action: .allow, from: [id(web)], to: .all),
        ])
        #expect(set.decide(peer: id(web), listenerIndex: 0).rule == "first")
    }

    @Test func matchingIsExactAndCaseSensitive() {
        let set = rules([Rule(name: "web", action: .allow, from: [id(web)], to: .all)])
        #expect(set.decide(peer: id(web + "/x"), listenerIndex: 0).rule == "default")
        #expect(set.decide(peer: id("spiffe://example.org/ns/prod/sa/Web"), listenerIndex: 0).rule == "default")
    }
}
