import WardIdentity

/// Something in the rules that is legal but almost certainly not what the operator meant.
public struct RuleWarning: Sendable, Equatable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public var description: String { "\(location): warning: \(message)" }
}

extension RuleSet {
    /// Finds rules that can never decide, duplicate patterns, and listeners nothing allows.
    /// Cost: one trie walk per pattern, so it stays fast on large rule sets.
    public func warnings(listenerLocations: [SourceLocation]) -> [RuleWarning] {
        shadowedRules() + duplicatePatterns() + unreachableListeners(listenerLocations)
    }

    /// A rule never decides when, on every listener it names, each of its patterns is covered
    /// by an unconditional rule of better precedence (a deny over an allow, an earlier rule).
    private func shadowedRules() -> [RuleWarning] {
        var warnings: [RuleWarning] = []
        for (index, rule) in source.rules.enumerated() {
            let precedence = rule.precedence(index: index)
            var shadows: [Int] = []
            var shadowedEverywhere = true
            for (listenerIndex, listener) in listenerNames.enumerated() where rule.to.contains(listener) {
                for pattern in rule.from {
                    var covered = false
                    forEachCandidate(covering: pattern, listenerIndex: listenerIndex) { other, conditional in
                        guard !conditional, source.rules[other].precedence(index: other) < precedence else { return }
                        covered = true
                        if !shadows.contains(other) { shadows.append(other) }
                    }
                    if !covered { shadowedEverywhere = false }
                }
            }
            guard shadowedEverywhere, !shadows.isEmpty, !rule.from.isEmpty else { continue }
            let by = shadows.sorted().map { "'\(source.rules[$0].name)' (\(source.rules[$0].location))" }
            warnings.append(
                RuleWarning(
                    location: rule.location,
                    message: "rule '\(rule.name)' can never decide: \(by.joined(separator: ", ")) "
                        + "\(shadows.count == 1 ? "decides" : "decide") every connection it matches"))
        }
        return warnings
    }

    /// The same pattern twice in one rule, or in two rules of the same action.
    private func duplicatePatterns() -> [RuleWarning] {
        var warnings: [RuleWarning] = []
        var first: [String: (rule: Rule, location: SourceLocation)] = [:]
        for rule in source.rules {
            for (pattern, location) in zip(rule.from, rule.fromLocations) {
                let key = "\(rule.action.rawValue) \(pattern)"
                if let earlier = first[key] {
                    let whereText =
                        earlier.rule.name == rule.name ? "earlier in this rule" : "in rule '\(earlier.rule.name)'"
                    warnings.append(
                        RuleWarning(
                            location: location,
                            message: "duplicate pattern '\(pattern)': already at \(earlier.location) \(whereText)"))
                } else {
                    first[key] = (rule, location)
                }
            }
        }
        return warnings
    }

    private func unreachableListeners(_ locations: [SourceLocation]) -> [RuleWarning] {
        guard source.defaultAction == .deny else { return [] }
        var warnings: [RuleWarning] = []
        for (index, listener) in listenerNames.enumerated()
        where !source.rules.contains(where: { $0.action == .allow && $0.to.contains(listener) }) {
            warnings.append(
                RuleWarning(
                    location: index < locations.count ? locations[index] : source.defaultLocation,
                    message:
                        "no rule allows listener '\(listener)': with default deny, every connection to it is refused"
                ))
        }
        return warnings
    }
}
