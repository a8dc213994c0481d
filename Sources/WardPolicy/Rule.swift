import WardIdentity

/// What a rule, or the rules' default, does with a connection it matches.
public enum RuleAction: String, Sendable {
    case allow
    case deny
}

/// Which listeners a rule applies to.
public enum ListenerSelector: Sendable, Equatable {
    case all
    case named([String])
}

/// One segmentation rule as written by the operator, already validated.
public struct Rule: Sendable {
    public var name: String
    public var action: RuleAction
    public var from: [SPIFFEID]
    public var to: ListenerSelector

    public init(name: String, action: RuleAction, from: [SPIFFEID], to: ListenerSelector) {
        self.name = name
        self.action = action
        self.from = from
        self.to = to
    }
}

/// A rules file: the default action and the rules in file order.
public struct RuleSource: Sendable {
    public var defaultAction: RuleAction
    public var rules: [Rule]

    public init(defaultAction: RuleAction, rules: [Rule]) {
        self.defaultAction = defaultAction
        self.rules = rules
    }
}
