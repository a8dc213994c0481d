import WardIdentity

/// Why the rules decide what they decide for one peer and listener: `ward explain`.
public struct Explanation: Sendable {
    public struct Match: Sendable {
        public var rule: Rule
        /// The first `from` pattern of the rule that matched the ID.
        public var pattern: IdentityPattern
        public var patternLocation: SourceLocation
        /// The `when:` condition that failed, if any.
        public var conditionFailure: ConditionFailure?
        /// Set for every match but the deciding one: why it did not decide.
        public var lostBecause: String?
    }

    public var decision: Decision
    /// Where the deciding rule (or `default:`) is written.
    public var decidedAt: SourceLocation
    /// Every rule whose identity pattern matched, in file order.
    public var matches: [Match]
}

extension RuleSet {
    /// Evaluates every rule in file order: a reference implementation, independent of the
    /// compiled tables, that also says why each matching rule lost. Not for the hot path.
    public func explain(peer: SPIFFEID, listener: String, context: DecisionContext) -> Explanation {
        var matches: [Explanation.Match] = []
        var winner: Int?
        for (index, rule) in source.rules.enumerated() where rule.to.contains(listener) {
            guard let patternIndex = rule.from.firstIndex(where: { $0.matches(peer) }) else { continue }
            let failure = rule.conditions.failure(in: context)
            if failure == nil,
                winner.map({ rule.precedence(index: index) < source.rules[$0].precedence(index: $0) }) ?? true
            {
                winner = index
            }
            matches.append(
                Explanation.Match(
                    rule: rule, pattern: rule.from[patternIndex], patternLocation: rule.fromLocations[patternIndex],
                    conditionFailure: failure))
        }
        let decision = decision(winner: winner)
        let winningRule = winner.map { source.rules[$0] }
        for index in matches.indices {
            let match = matches[index]
            if let failure = match.conditionFailure {
                matches[index].lostBecause = "its when.\(failure.rawValue) condition does not hold"
            } else if match.rule.name != winningRule?.name, let winningRule {
                matches[index].lostBecause = Self.reason(loser: match.rule, winner: winningRule)
            }
        }
        return Explanation(
            decision: decision, decidedAt: winningRule?.location ?? source.defaultLocation, matches: matches)
    }

    private static func reason(loser: Rule, winner: Rule) -> String {
        switch (winner.action, loser.action) {
        case (.deny, .allow):
            return "a matching deny wins over any allow (\(winner.name))"
        case (.deny, .deny) where winner.mode == .enforce && loser.mode == .audit:
            return "an enforced deny wins over an audit-mode deny (\(winner.name))"
        default:
            return "\(winner.name) comes first in the file"
        }
    }
}
