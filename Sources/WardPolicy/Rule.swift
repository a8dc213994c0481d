import WardIdentity

/// What a rule, or the rules' default, does with a connection it matches.
public enum RuleAction: String, Sendable {
    case allow
    case deny
}

/// Whether a deny is carried out (`enforce`) or only logged (`audit`), so a new rule can be
/// rolled out safely: an audit denial lets the connection through, logged `enforced: false`.
public enum RuleMode: String, Sendable {
    case enforce
    case audit
}

/// Which listeners a rule applies to.
public enum ListenerSelector: Sendable, Equatable {
    case all
    case named([String])

    func contains(_ listener: String) -> Bool {
        switch self {
        case .all: return true
        case .named(let names): return names.contains(listener)
        }
    }
}

/// Where something was written, printed as `FILE:LINE` (or `FILE`).
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int?

    public init(file: String, line: Int?) {
        self.file = file
        self.line = line
    }

    public var description: String { line.map { "\(file):\($0)" } ?? file }
}

/// One segmentation rule as written by the operator, already validated.
public struct Rule: Sendable {
    public var name: String
    public var action: RuleAction
    public var mode: RuleMode
    public var from: [IdentityPattern]
    /// Where each `from` entry is written, parallel to `from`.
    public var fromLocations: [SourceLocation]
    public var to: ListenerSelector
    public var conditions: RuleConditions
    public var location: SourceLocation

    public init(
        name: String, action: RuleAction, mode: RuleMode = .enforce, from: [IdentityPattern],
        fromLocations: [SourceLocation]? = nil, to: ListenerSelector, conditions: RuleConditions = RuleConditions(),
        location: SourceLocation = SourceLocation(file: "rules", line: nil)
    ) {
        self.name = name
        self.action = action
        self.mode = mode
        self.from = from
        self.fromLocations = fromLocations ?? Array(repeating: location, count: from.count)
        self.to = to
        self.conditions = conditions
        self.location = location
    }

    /// Precedence among matching rules: enforced denies, then audit denies, then allows; within
    /// each, file order. Lower wins.
    func precedence(index: Int) -> UInt64 {
        let rank: UInt64 = action == .allow ? 2 : (mode == .enforce ? 0 : 1)
        return rank << 32 | UInt64(index)
    }
}

/// A rules file: the default action, the default mode, and the rules in file order.
public struct RuleSource: Sendable {
    public var defaultAction: RuleAction
    public var mode: RuleMode
    public var rules: [Rule]
    /// Where `default:` is written (or the file), for `ward explain`.
    public var defaultLocation: SourceLocation

    public init(
        defaultAction: RuleAction, mode: RuleMode = .enforce, rules: [Rule],
        defaultLocation: SourceLocation = SourceLocation(file: "rules", line: nil)
    ) {
        self.defaultAction = defaultAction
        self.mode = mode
        self.rules = rules
        self.defaultLocation = defaultLocation
    }
}
