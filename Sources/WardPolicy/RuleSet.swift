import WardIdentity

/// Rules compiled for lookup: one immutable table per listener, built once at load.
///
/// Each table holds a hash map for exact IDs and a segment trie per trust domain for
/// patterns; every slot lists its rules already in precedence order, so a decision walks the
/// ID's segments once and never the rule list. `decide` allocates nothing.
/// Thread rules: immutable after init; share it freely.
public final class RuleSet: Sendable {
    public let source: RuleSource
    public let listenerNames: [String]
    public var ruleCount: Int { source.rules.count }
    private let tables: [ListenerTable]

    /// Compiles `source` for the listeners named, in that order; a listener's index in
    /// `listenerNames` is what `decide` takes. Cost: linear in the number of patterns.
    public init(compiling source: RuleSource, listeners: [String]) {
        self.source = source
        self.listenerNames = listeners
        self.tables = listeners.map { ListenerTable(compiling: source.rules, for: $0) }
    }

    /// The decision for `peer` connecting to the listener at `listenerIndex`.
    public func decide(peer: SPIFFEID, listenerIndex: Int, context: DecisionContext) -> Decision {
        let winner = tables[listenerIndex].bestCandidate(for: peer, rules: source.rules, context: context)
        return decision(winner: winner.map { Int($0.rule) })
    }

    func forEachCandidate(
        covering pattern: IdentityPattern, listenerIndex: Int, _ visit: (_ rule: Int, _ conditional: Bool) -> Void
    ) {
        tables[listenerIndex].forEachCandidate(covering: pattern) { visit(Int($0.rule), $0.conditional) }
    }

    func decision(winner: Int?) -> Decision {
        guard let winner else {
            return Decision(
                action: source.defaultAction, rule: Decision.defaultRuleName,
                enforced: source.defaultAction == .allow || source.mode == .enforce)
        }
        let rule = source.rules[winner]
        return Decision(action: rule.action, rule: rule.name, enforced: rule.action == .allow || rule.mode == .enforce)
    }

    /// The index of a listener by name, for callers outside the hot path.
    public func listenerIndex(named name: String) -> Int? {
        listenerNames.firstIndex(of: name)
    }
}

/// A rule in a slot, with its precedence inlined so a slot scan touches one array.
struct Candidate: Sendable {
    var precedence: UInt64
    var rule: Int32
    var conditional: Bool
}

/// A run of `ListenerTable.candidates`.
struct CandidateRange: Sendable {
    var start: Int32 = 0
    var count: Int32 = 0
}

struct TrieNode: Sendable {
    var literals: [Substring: Int32] = [:]
    var star: Int32 = -1
    /// Patterns that end at this node.
    var here = CandidateRange()
    /// Patterns that end in `**` at this node: they match one or more further segments.
    var below = CandidateRange()
}

/// The lookup for one listener.
struct ListenerTable: Sendable {
    private var exact: [SPIFFEID: CandidateRange] = [:]
    private var roots: [TrustDomain: Int32] = [:]
    private var nodes: [TrieNode] = []
    private var candidates: [Candidate] = []

    init(compiling rules: [Rule], for listener: String) {
        // Slots get candidates in precedence order: pass 1 lists them, pass 2 places them.
        enum Slot: Hashable {
            case exact(SPIFFEID)
            case here(Int32)
            case below(Int32)
        }
        var placements: [(slot: Slot, candidate: Candidate)] = []
        let order = rules.indices.filter { rules[$0].to.contains(listener) }
            .sorted { rules[$0].precedence(index: $0) < rules[$1].precedence(index: $1) }
        for index in order {
            let rule = rules[index]
            let candidate = Candidate(
                precedence: rule.precedence(index: index), rule: Int32(index), conditional: !rule.conditions.isEmpty)
            for pattern in rule.from {
                if pattern.isExact, let id = try? SPIFFEID(parsing: pattern.description) {
                    placements.append((.exact(id), candidate))
                } else {
                    let node = insert(pattern)
                    placements.append((pattern.matchesDescendants ? .below(node) : .here(node), candidate))
                }
            }
        }
        var grouped: [Slot: [Candidate]] = [:]
        for (slot, candidate) in placements {
            // A rule listing the same pattern twice needs one entry.
            if grouped[slot]?.last?.rule == candidate.rule { continue }
            grouped[slot, default: []].append(candidate)
        }
        candidates.reserveCapacity(placements.count)
        for (slot, list) in grouped {
            let range = CandidateRange(start: Int32(candidates.count), count: Int32(list.count))
            candidates.append(contentsOf: list)
            switch slot {
            case .exact(let id): exact[id] = range
            case .here(let node): nodes[Int(node)].here = range
            case .below(let node): nodes[Int(node)].below = range
            }
        }
    }

    private mutating func insert(_ pattern: IdentityPattern) -> Int32 {
        var node: Int32
        if let root = roots[pattern.trustDomain] {
            node = root
        } else {
            node = Int32(nodes.count)
            nodes.append(TrieNode())
            roots[pattern.trustDomain] = node
        }
        for segment in pattern.segments {
            let next: Int32?
            switch segment {
            case .one: next = nodes[Int(node)].star >= 0 ? nodes[Int(node)].star : nil
            case .literal(let text): next = nodes[Int(node)].literals[text]
            }
            if let next {
                node = next
                continue
            }
            let created = Int32(nodes.count)
            nodes.append(TrieNode())
            switch segment {
            case .one: nodes[Int(node)].star = created
            case .literal(let text): nodes[Int(node)].literals[text] = created
            }
            node = created
        }
        return node
    }

    /// The matching rule of best precedence whose conditions hold, or nil for the default.
    func bestCandidate(for peer: SPIFFEID, rules: [Rule], context: DecisionContext) -> Candidate? {
        var best: Candidate?
        if let range = exact[peer] { consider(range, &best, rules, context) }
        if let root = roots[peer.trustDomain] {
            let utf8 = peer.description.utf8
            var start = utf8.index(utf8.startIndex, offsetBy: peer.pathOffset)
            if start != utf8.endIndex {
                start = utf8.index(after: start)  // skip the path's leading "/"
                walk(root, utf8, start, &best, rules, context)
            }
        }
        return best
    }

    /// Matches the segment starting at `start` against `node`'s children, depth first. The
    /// recursion is as deep as the ID has segments; nothing is allocated.
    private func walk(
        _ node: Int32, _ utf8: String.UTF8View, _ start: String.UTF8View.Index, _ best: inout Candidate?,
        _ rules: [Rule], _ context: DecisionContext
    ) {
        let current = nodes[Int(node)]
        // At least one segment remains here, so `**` patterns ending at this node match.
        consider(current.below, &best, rules, context)
        var end = start
        while end != utf8.endIndex, utf8[end] != UInt8(ascii: "/") { end = utf8.index(after: end) }
        let isLast = end == utf8.endIndex
        let next = isLast ? end : utf8.index(after: end)
        if let child = current.literals[Substring(utf8[start..<end])] {
            if isLast {
                consider(nodes[Int(child)].here, &best, rules, context)
            } else {
                walk(child, utf8, next, &best, rules, context)
            }
        }
        if current.star >= 0 {
            if isLast {
                consider(nodes[Int(current.star)].here, &best, rules, context)
            } else {
                walk(current.star, utf8, next, &best, rules, context)
            }
        }
    }

    /// Calls `visit` with every candidate whose pattern covers `pattern` (matches every ID it
    /// matches). For `ward check`; walks the trie once, like a lookup.
    func forEachCandidate(covering pattern: IdentityPattern, _ visit: (Candidate) -> Void) {
        if pattern.isExact, let id = try? SPIFFEID(parsing: pattern.description), let range = exact[id] {
            visitAll(range, visit)
        }
        guard let root = roots[pattern.trustDomain] else { return }
        walkCovering(root, pattern, 0, visit)
    }

    private func walkCovering(
        _ node: Int32, _ pattern: IdentityPattern, _ depth: Int, _ visit: (Candidate) -> Void
    ) {
        let current = nodes[Int(node)]
        if depth == pattern.segments.count {
            // `**` here needs at least one more segment: it covers only a pattern that has one too.
            visitAll(pattern.matchesDescendants ? current.below : current.here, visit)
            return
        }
        visitAll(current.below, visit)
        if case .literal(let text) = pattern.segments[depth], let child = current.literals[text] {
            walkCovering(child, pattern, depth + 1, visit)
        }
        if current.star >= 0 { walkCovering(current.star, pattern, depth + 1, visit) }
    }

    private func visitAll(_ range: CandidateRange, _ visit: (Candidate) -> Void) {
        for index in Int(range.start)..<Int(range.start + range.count) { visit(candidates[index]) }
    }

    private func consider(
        _ range: CandidateRange, _ best: inout Candidate?, _ rules: [Rule], _ context: DecisionContext
    ) {
        var index = Int(range.start)
        let end = index + Int(range.count)
        while index < end {
            let candidate = candidates[index]
            // The slot is in precedence order: nothing after this can beat the current best.
            if let best, best.precedence <= candidate.precedence { return }
            if !candidate.conditional || rules[Int(candidate.rule)].conditions.failure(in: context) == nil {
                best = candidate
                return
            }
            index += 1
        }
    }
}
