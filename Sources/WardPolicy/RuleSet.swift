import WardIdentity

/// Rules compiled for lookup: one immutable table per listener, built once at load.
///
/// Deny-overrides is resolved at compile time, so a lookup is one hash of the peer's ID and
/// never walks the rule list. Thread rules: immutable after init; share it freely.
public final class RuleSet: Sendable {
    public let listenerNames: [String]
    public let ruleCount: Int
    private let tables: [ListenerTable]

    /// Compiles `source` for the listeners named, in that order; a listener's index in
    /// `listenerNames` is what `decide` takes.
    public init(compiling source: RuleSource, listeners: [String]) {
        self.listenerNames = listeners
        self.ruleCount = source.rules.count
        self.tables = listeners.map { listener in
            ListenerTable(
                compiling: source.rules.filter { $0.applies(to: listener) },
                defaultAction: source.defaultAction)
        }
    }

    /// The decision for `peer` connecting to the listener at `listenerIndex`.
    public func decide(peer: SPIFFEID, listenerIndex: Int) -> Decision {
        tables[listenerIndex].decide(peer)
    }

    /// The index of a listener by name, for callers outside the hot path.
    public func listenerIndex(named name: String) -> Int? {
        listenerNames.firstIndex(of: name)
    }
}

/// The lookup for one listener. Exact IDs live in a hash map; identity patterns will join as
/// a per-trust-domain segment trie beside it.
struct ListenerTable: Sendable {
    private let exact: [SPIFFEID: Decision]
    private let fallback: Decision

    init(compiling rules: [Rule], defaultAction: RuleAction) {
        var exact: [SPIFFEID: Decision] = [:]
        for rule in rules {
            for id in rule.from {
                // A deny beats any allow; among equals, the first rule in the file decides.
                if let existing = exact[id], existing.action == .deny || rule.action == .allow {
                    continue
                }
                exact[id] = Decision(action: rule.action, rule: rule.name)
            }
        }
        self.exact = exact
        self.fallback = Decision(action: defaultAction, rule: Decision.defaultRuleName)
    }

    func decide(_ peer: SPIFFEID) -> Decision {
        exact[peer] ?? fallback
    }
}

extension Rule {
    func applies(to listener: String) -> Bool {
        switch to {
        case .all: return true
        case .named(let names): return names.contains(listener)
        }
    }
}
