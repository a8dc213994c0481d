/// The outcome of looking a peer up in the rules. It always names what decided it: a rule's
/// name, or `default` when no rule matched, so logs can say "under which rule".
public struct Decision: Sendable, Equatable {
    public static let defaultRuleName = "default"

    public var action: RuleAction
    public var rule: String

    public init(action: RuleAction, rule: String) {
        self.action = action
        self.rule = rule
    }

    public var isAllowed: Bool { action == .allow }
}
