import Testing
import WardIdentity
import WardPolicy

@Suite struct RuleSetTests {
    func id(_ text: String) -> SPIFFEID { try! SPIFFEID(parsing: text) }
    func pattern(_ text: String) -> IdentityPattern { try! IdentityPattern(parsing: text) }
    let web = "spiffe://example.org/ns/prod/sa/web"
    let batch = "spiffe://example.org/ns/dev/sa/batch"
    let anywhere = DecisionContext(address: nil, minuteOfDay: 0, svidLifetimeSeconds: 3600)

    func rule(
        _ name: String, _ action: RuleAction, _ from: [String], to: ListenerSelector = .all, mode: RuleMode = .enforce,
        when conditions: RuleConditions = RuleConditions()
    ) -> Rule {
        Rule(name: name, action: action, mode: mode, from: from.map(pattern), to: to, conditions: conditions)
    }

    func rules(_ list: [Rule], default action: RuleAction = .deny, mode: RuleMode = .enforce) -> RuleSet {
        RuleSet(
            compiling: RuleSource(defaultAction: action, mode: mode, rules: list), listeners: ["orders", "admin"])
    }

    /// Decides with the compiled tables and checks the reference evaluation agrees.
    func decide(_ set: RuleSet, _ peer: String, listener: Int = 0, context: DecisionContext? = nil) -> Decision {
        let context = context ?? anywhere
        let compiled = set.decide(peer: id(peer), listenerIndex: listener, context: context)
        let reference = set.explain(peer: id(peer), listener: set.listenerNames[listener], context: context)
        #expect(compiled == reference.decision, "compiled and reference disagree for \(peer)")
        return compiled
    }

    @Test func defaultDecidesWhenNothingMatches() {
        #expect(decide(rules([]), web) == Decision(action: .deny, rule: "default"))
        #expect(decide(rules([], default: .allow), web) == Decision(action: .allow, rule: "default"))
        #expect(decide(rules([], mode: .audit), web) == Decision(action: .deny, rule: "default", enforced: false))
    }

    @Test func allowAppliesOnlyToItsListeners() {
        let set = rules([rule("web", .allow, [web], to: .named(["orders"]))])
        #expect(decide(set, web) == Decision(action: .allow, rule: "web"))
        #expect(decide(set, web, listener: 1).rule == "default")
        #expect(decide(set, batch).rule == "default")
    }

    @Test func denyWinsWhateverTheOrderAndWhateverTheSpecificity() {
        let allow = rule("allow-web", .allow, [web])
        let deny = rule("deny-prod", .deny, ["spiffe://example.org/ns/prod/**"], to: .named(["admin"]))
        for order in [[allow, deny], [deny, allow]] {
            let set = rules(order, default: .allow)
            #expect(decide(set, web, listener: 1) == Decision(action: .deny, rule: "deny-prod"))
            #expect(decide(set, web, listener: 0) == Decision(action: .allow, rule: "allow-web"))
        }
    }

    @Test func firstMatchingRuleOfTheWinningKindIsNamed() {
        let set = rules([
            rule("wide", .allow, ["spiffe://example.org/**"]), rule("exact", .allow, [web]),
            rule("deny-1", .deny, ["spiffe://example.org/ns/*/sa/batch"]), rule("deny-2", .deny, [batch]),
        ])
        #expect(decide(set, web).rule == "wide")
        #expect(decide(set, batch).rule == "deny-1")
    }

    @Test func patternsMatchThroughTheTrie() {
        let set = rules([
            rule("one", .allow, ["spiffe://example.org/ns/prod/sa/*"]),
            rule("mid", .allow, ["spiffe://example.org/ns/*/sa/db"]),
            rule("all-partner", .allow, ["spiffe://partner.org/**"]),
        ])
        #expect(decide(set, web).rule == "one")
        #expect(decide(set, "spiffe://example.org/ns/dev/sa/db").rule == "mid")
        #expect(decide(set, "spiffe://example.org/ns/prod/sa/db").rule == "one")
        #expect(decide(set, "spiffe://example.org/ns/prod/sa/web/extra").rule == "default")
        #expect(decide(set, "spiffe://partner.org/x/y/z").rule == "all-partner")
        #expect(decide(set, "spiffe://example.org/ns/prod/sa/Web").rule == "one")
    }

    @Test func conditionsGateAMatch() throws {
        let office = RuleConditions(sources: [try #require(CIDR(parsing: "10.0.0.0/8"))])
        let set = rules([
            rule("office-only", .allow, [web], when: office),
            rule(
                "short-lived-deny", .deny, ["spiffe://example.org/**"], when: RuleConditions(maxSVIDLifetimeSeconds: 60)
            ),
        ])
        let inside = DecisionContext(
            address: IPAddress(parsing: "10.1.2.3"), minuteOfDay: 0, svidLifetimeSeconds: 3600)
        let outside = DecisionContext(
            address: IPAddress(parsing: "192.0.2.1"), minuteOfDay: 0, svidLifetimeSeconds: 3600)
        #expect(decide(set, web, context: inside).rule == "office-only")
        #expect(decide(set, web, context: outside).rule == "default")
        var shortLived = inside
        shortLived.svidLifetimeSeconds = 60
        #expect(decide(set, web, context: shortLived).rule == "short-lived-deny")
    }

    @Test func auditDenyLetsThroughUnlessAnEnforcedDenyMatches() {
        let trial = rule("trial-deny", .deny, ["spiffe://example.org/ns/prod/**"], mode: .audit)
        let set = rules([rule("web", .allow, [web]), trial])
        let decision = decide(set, web)
        #expect(decision == Decision(action: .deny, rule: "trial-deny", enforced: false))
        #expect(decision.letsThrough)
        let enforced = rules([trial, rule("hard-deny", .deny, [web])])
        #expect(decide(enforced, web) == Decision(action: .deny, rule: "hard-deny", enforced: true))
        #expect(!decide(enforced, web).letsThrough)
    }

    @Test func explainSaysWhyEachMatchLost() {
        let set = rules([
            rule("allow-web", .allow, [web]), rule("audit-deny", .deny, ["spiffe://example.org/**"], mode: .audit),
            rule("deny-prod", .deny, ["spiffe://example.org/ns/prod/**"]),
            rule("night-only", .allow, [web], when: RuleConditions(hours: HourRange(parsing: "22:00-06:00"))),
        ])
        let explanation = set.explain(
            peer: id(web), listener: "orders",
            context: DecisionContext(
                address: nil, minuteOfDay: 12 * 60, svidLifetimeSeconds: 60))
        #expect(explanation.decision == Decision(action: .deny, rule: "deny-prod"))
        let reasons = Dictionary(uniqueKeysWithValues: explanation.matches.map { ($0.rule.name, $0.lostBecause) })
        #expect(reasons["allow-web"] == "a matching deny wins over any allow (deny-prod)")
        #expect(reasons["audit-deny"] == "an enforced deny wins over an audit-mode deny (deny-prod)")
        #expect(reasons["deny-prod"] == .some(nil))
        #expect(reasons["night-only"] == "its when.hours condition does not hold")
    }

    /// Random rule sets and IDs: the compiled tables always agree with the reference scan.
    @Test func compiledLookupAgreesWithReference() {
        var generator = SystemRandomNumberGenerator()
        let words = ["a", "b", "c"]
        func randomPath(wildcards: Bool) -> String {
            let depth = Int.random(in: 1...4, using: &generator)
            var segments: [String] = []
            for index in 0..<depth {
                let roll = Int.random(in: 0..<10, using: &generator)
                if wildcards, roll == 0, index == depth - 1 {
                    segments.append("**")
                } else if wildcards, roll < 3 {
                    segments.append("*")
                } else {
                    segments.append(words.randomElement(using: &generator)!)
                }
            }
            return "spiffe://example.org/" + segments.joined(separator: "/")
        }
        for round in 0..<200 {
            var list: [Rule] = []
            for index in 0..<Int.random(in: 1...12, using: &generator) {
                let action: RuleAction = Bool.random(using: &generator) ? .allow : .deny
                let mode: RuleMode = Int.random(in: 0..<4, using: &generator) == 0 ? .audit : .enforce
                let to: ListenerSelector = Bool.random(using: &generator) ? .all : .named(["orders"])
                list.append(rule("r\(index)", action, [randomPath(wildcards: true)], to: to, mode: mode))
            }
            let set = rules(list, default: round % 2 == 0 ? .deny : .allow)
            for _ in 0..<20 {
                _ = decide(set, randomPath(wildcards: false), listener: Int.random(in: 0...1, using: &generator))
            }
        }
    }
}
