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
    /// What each rule decides when it wins, built once so a lookup copies no `Rule`.
    private let ruleDecisions: [Decision]
    private let defaultDecision: Decision

    /// Compiles `source` for the listeners named, in that order; a listener's index in
    /// `listenerNames` is what `decide` takes. Cost: linear in the number of patterns.
    public init(compiling source: RuleSource, listeners: [String]) {
        self.source = source
        self.listenerNames = listeners
        self.tables = listeners.map { ListenerTable(compiling: source.rules, for: $0) }
        self.ruleDecisions = source.rules.map {
            Decision(action: $0.action, rule: $0.name, enforced: $0.action == .allow || $0.mode == .enforce)
        }
        self.defaultDecision = Decision(
            action: source.defaultAction, rule: Decision.defaultRuleName,
            enforced: source.defaultAction == .allow || source.mode == .enforce)
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
        guard let winner else { return defaultDecision }
        return ruleDecisions[winner]
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
    var star: Int32 = -1
    /// Patterns that end at this node.
    var here = CandidateRange()
    /// Patterns that end in `**` at this node: they match one or more further segments.
    var below = CandidateRange()
}

/// The lookup for one listener: exact IDs in one hash table, patterns in a segment trie per
/// trust domain whose literal edges live in another, keyed by (parent node, segment bytes).
/// A class so that picking a listener's table costs one reference, not a copy of its arrays.
final class ListenerTable: Sendable {
    /// Whole ID bytes -> index into `exactRanges`.
    private let exact: ByteKeyTable
    private let exactRanges: [CandidateRange]
    /// (-1, trust domain) -> root node; (node, segment) -> child node.
    private let edges: ByteKeyTable
    private let nodes: [TrieNode]
    private let candidates: [Candidate]
    static let noParent: Int32 = -1

    init(compiling rules: [Rule], for listener: String) {
        var builder = TableBuilder(rules: rules, listener: listener)
        builder.build()
        exact = builder.exact
        exactRanges = builder.exactRanges
        edges = builder.edges
        nodes = builder.nodes
        candidates = builder.candidates
    }

    /// The matching rule of best precedence whose conditions hold, or nil for the default.
    func bestCandidate(for peer: SPIFFEID, rules: [Rule], context: DecisionContext) -> Candidate? {
        var best: Candidate?
        let searched: Bool? = peer.description.utf8.withContiguousStorageIfAvailable { bytes in
            lookUp(bytes, pathOffset: peer.pathOffset, &best, rules, context)
            return true
        }
        if searched == nil {
            // Only a non-native string lacks contiguous UTF-8; copying it is the rare slow path.
            Array(peer.description.utf8).withUnsafeBufferPointer {
                lookUp($0, pathOffset: peer.pathOffset, &best, rules, context)
            }
        }
        return best
    }

    private func lookUp(
        _ id: UnsafeBufferPointer<UInt8>, pathOffset: Int, _ best: inout Candidate?, _ rules: [Rule],
        _ context: DecisionContext
    ) {
        let index = exact.find(parent: Self.noParent, key: id)
        if index >= 0 { consider(exactRanges[Int(index)], &best, rules, context) }
        let schemeLength = 9  // "spiffe://"
        let domain = UnsafeBufferPointer(rebasing: id[schemeLength..<pathOffset])
        let root = edges.find(parent: Self.noParent, key: domain)
        // The path starts with "/"; a root ID has none and matches no pattern.
        guard root >= 0, pathOffset < id.count else { return }
        walk(root, id, pathOffset + 1, &best, rules, context)
    }

    /// Matches the segment starting at `start` against `node`'s children, depth first. The
    /// recursion is as deep as the ID has segments; nothing is allocated.
    private func walk(
        _ node: Int32, _ id: UnsafeBufferPointer<UInt8>, _ start: Int, _ best: inout Candidate?, _ rules: [Rule],
        _ context: DecisionContext
    ) {
        let current = nodes[Int(node)]
        // At least one segment remains here, so `**` patterns ending at this node match.
        consider(current.below, &best, rules, context)
        var end = start
        while end < id.count, id[end] != UInt8(ascii: "/") { end += 1 }
        let isLast = end == id.count
        let child = edges.find(parent: node, key: UnsafeBufferPointer(rebasing: id[start..<end]))
        if child >= 0 {
            if isLast {
                consider(nodes[Int(child)].here, &best, rules, context)
            } else {
                walk(child, id, end + 1, &best, rules, context)
            }
        }
        if current.star >= 0 {
            if isLast {
                consider(nodes[Int(current.star)].here, &best, rules, context)
            } else {
                walk(current.star, id, end + 1, &best, rules, context)
            }
        }
    }

    /// Calls `visit` with every candidate whose pattern covers `pattern` (matches every ID it
    /// matches). For `ward check`; walks the trie once, like a lookup.
    func forEachCandidate(covering pattern: IdentityPattern, _ visit: (Candidate) -> Void) {
        if pattern.isExact {
            var text = pattern.description
            let index = text.withUTF8 { exact.find(parent: Self.noParent, key: $0) }
            if index >= 0 { visitAll(exactRanges[Int(index)], visit) }
        }
        var domain = pattern.trustDomain.name
        let root = domain.withUTF8 { edges.find(parent: Self.noParent, key: $0) }
        if root >= 0 { walkCovering(root, pattern, 0, visit) }
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
        if case .literal(var text) = pattern.segments[depth] {
            let child = text.withUTF8 { edges.find(parent: node, key: $0) }
            if child >= 0 { walkCovering(child, pattern, depth + 1, visit) }
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

/// Builds a `ListenerTable`'s arrays; kept apart so the table itself is immutable.
private struct TableBuilder {
    let rules: [Rule]
    let listener: String
    var exact = ByteKeyTable()
    var exactRanges: [CandidateRange] = []
    var edges = ByteKeyTable()
    var nodes: [TrieNode] = []
    var candidates: [Candidate] = []

    init(rules: [Rule], listener: String) {
        self.rules = rules
        self.listener = listener
    }

    mutating func build() {
        // Rules are visited in precedence order and their slots recorded; a counting sort by
        // slot then lays each slot's candidates out contiguously, still in precedence order.
        var order: [(precedence: UInt64, index: Int)] = []
        order.reserveCapacity(rules.count)
        for (index, rule) in rules.enumerated() where rule.to.contains(listener) {
            order.append((rule.precedence(index: index), index))
        }
        order.sort { $0.precedence < $1.precedence }
        exact = ByteKeyTable(capacity: order.count)
        var placements: [(slot: Slot, candidate: Candidate)] = []
        placements.reserveCapacity(order.count)
        for (precedence, index) in order {
            let rule = rules[index]
            let candidate = Candidate(
                precedence: precedence, rule: Int32(index), conditional: !rule.conditions.isEmpty)
            // A rule listing the same pattern twice needs one entry.
            let patterns = rule.from.count > 1 ? Array(Set(rule.from)) : rule.from
            for pattern in patterns {
                placements.append((slot(for: pattern), candidate))
            }
        }
        let exactCount = exactRanges.count
        func flat(_ slot: Slot) -> Int {
            switch slot.kind {
            case .exact: return Int(slot.index)
            case .here: return exactCount + 2 * Int(slot.index)
            case .below: return exactCount + 2 * Int(slot.index) + 1
            }
        }
        var starts = [Int32](repeating: 0, count: exactCount + 2 * nodes.count + 1)
        for placement in placements { starts[flat(placement.slot) + 1] += 1 }
        for index in 1..<starts.count { starts[index] += starts[index - 1] }
        var filled = starts
        candidates = [Candidate](
            repeating: Candidate(precedence: 0, rule: 0, conditional: false), count: placements.count)
        for placement in placements {
            let position = flat(placement.slot)
            candidates[Int(filled[position])] = placement.candidate
            filled[position] += 1
        }
        func range(_ position: Int) -> CandidateRange {
            CandidateRange(start: starts[position], count: starts[position + 1] - starts[position])
        }
        for index in 0..<exactCount { exactRanges[index] = range(index) }
        for node in nodes.indices {
            nodes[node].here = range(exactCount + 2 * node)
            nodes[node].below = range(exactCount + 2 * node + 1)
        }
    }

    private struct Slot {
        enum Kind { case exact, here, below }
        var kind: Kind
        var index: Int32
    }

    private mutating func slot(for pattern: IdentityPattern) -> Slot {
        if pattern.isExact {
            var text = pattern.description
            let next = Int32(exactRanges.count)
            let stored = text.withUTF8 { exact.insert(parent: ListenerTable.noParent, key: $0, value: next) }
            if stored == next { exactRanges.append(CandidateRange()) }
            return Slot(kind: .exact, index: stored)
        }
        let node = insert(pattern)
        return Slot(kind: pattern.matchesDescendants ? .below : .here, index: node)
    }

    private mutating func newNode() -> Int32 {
        nodes.append(TrieNode())
        return Int32(nodes.count - 1)
    }

    private mutating func insert(_ pattern: IdentityPattern) -> Int32 {
        var node = edges.insert(
            parent: ListenerTable.noParent, key: Substring(pattern.trustDomain.name), value: Int32(nodes.count))
        if node == nodes.count { _ = newNode() }
        for segment in pattern.segments {
            switch segment {
            case .one:
                if nodes[Int(node)].star < 0 { nodes[Int(node)].star = newNode() }
                node = nodes[Int(node)].star
            case .literal(let text):
                let child = edges.insert(parent: node, key: text, value: Int32(nodes.count))
                if child == nodes.count { _ = newNode() }
                node = child
            }
        }
        return node
    }

}
