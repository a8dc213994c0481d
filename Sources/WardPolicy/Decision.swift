/// The outcome of looking a peer up in the rules. It always names what decided it: a rule's
/// name, or `default` when no rule matched, so logs can say "under which rule".
public struct Decision: Sendable, Equatable {
    public static let defaultRuleName = "default"

    /// What the deciding rule says.
    public var action: RuleAction
    public var rule: String
    /// False for a deny in audit mode: logged, not carried out.
    public var enforced: Bool

    public init(action: RuleAction, rule: String, enforced: Bool = true) {
        self.action = action
        self.rule = rule
        self.enforced = enforced
    }

    public var isAllowed: Bool { action == .allow }
    /// Whether the connection goes through: an allow, or a deny that is only audited.
    public var letsThrough: Bool { action == .allow || !enforced }
}
