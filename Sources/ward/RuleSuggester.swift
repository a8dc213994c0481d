import Foundation
import WardIdentity

/// Turns observed traffic (allow and audit-mode deny events of a connection log) into a rules
/// file that allows exactly what was seen: the discovery step of rolling out segmentation.
struct RuleSuggester {
    struct Seen {
        var count = 0
        var first = ""
        var last = ""
    }

    var minimumCount: Int
    var generalize: Bool
    /// (peer, listener) -> what was seen.
    private var pairs: [String: [String: Seen]] = [:]
    private(set) public var eventsRead = 0

    init(minimumCount: Int = 1, generalize: Bool = false) {
        self.minimumCount = minimumCount
        self.generalize = generalize
    }

    /// Feeds one log record; ignores everything but `allow` and unenforced `deny` of peers calling
    /// a listener (outbound connections are Ward calling out: no rule decides them).
    mutating func observe(_ record: [String: Any]) {
        let event = record["event"] as? String
        guard event == "allow" || (event == "deny" && record["enforced"] as? Bool == false),
            record["direction"] as? String != "outbound",
            let peer = record["peer_id"] as? String, let listener = record["listener"] as? String
        else { return }
        eventsRead += 1
        let time = record["ts"] as? String ?? ""
        var seen = pairs[peer, default: [:]][listener, default: Seen()]
        seen.count += 1
        if seen.first.isEmpty || time < seen.first { seen.first = time }
        if time > seen.last { seen.last = time }
        pairs[peer, default: [:]][listener] = seen
    }

    /// The rules YAML.
    func yaml(source: String) -> String {
        struct Suggestion {
            var from: [String]
            var listeners: [String]
            var count: Int
            var first: String
            var last: String
        }
        var suggestions: [Suggestion] = []
        for (peer, listeners) in pairs {
            let kept = listeners.filter { $0.value.count >= minimumCount }
            guard !kept.isEmpty else { continue }
            suggestions.append(
                Suggestion(
                    from: [peer], listeners: kept.keys.sorted(), count: kept.values.reduce(0) { $0 + $1.count },
                    first: kept.values.map(\.first).min() ?? "", last: kept.values.map(\.last).max() ?? ""))
        }
        if generalize {
            // Siblings (same parent path) reaching the same listeners become `parent/*`.
            var groups: [String: [Suggestion]] = [:]
            for suggestion in suggestions {
                let peer = suggestion.from[0]
                let parent = peer.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(
                    separator: "/")
                groups["\(parent)|\(suggestion.listeners.joined(separator: ","))", default: []].append(suggestion)
            }
            suggestions = groups.values.flatMap { group -> [Suggestion] in
                guard group.count >= 2,
                    let parent = group[0].from[0].split(separator: "/", omittingEmptySubsequences: false)
                        .dropLast().joined(separator: "/") as String?,
                    (try? SPIFFEID(parsing: parent))?.hasPath == true
                else { return group }
                return [
                    Suggestion(
                        from: [parent + "/*"], listeners: group[0].listeners, count: group.reduce(0) { $0 + $1.count },
                        first: group.map(\.first).min() ?? "", last: group.map(\.last).max() ?? "")
                ]
            }
        }
        suggestions.sort { $0.from[0] < $1.from[0] }
        var names: Set<String> = []
        var out = """
            # Suggested by `ward suggest` from \(source): \(eventsRead) allowed or audit-denied connection(s).
            # It allows exactly the traffic observed\(generalize ? " (siblings generalised to *)" : ""); review it, then enforce.
            default: deny
            rules:

            """
        if suggestions.isEmpty { out = out.replacingOccurrences(of: "rules:\n", with: "rules: []\n") }
        for suggestion in suggestions {
            var name = "allow-" + Self.slug(suggestion.from[0])
            var suffix = 2
            while names.contains(name) {
                name = "allow-\(Self.slug(suggestion.from[0]))-\(suffix)"
                suffix += 1
            }
            names.insert(name)
            out += "  # \(suggestion.count) connection(s), first \(suggestion.first), last \(suggestion.last)\n"
            out += "  - name: \(name)\n    action: allow\n"
            out += "    from: [\"\(suggestion.from.joined(separator: "\", \""))\"]\n"
            out += "    to: [\(suggestion.listeners.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
        }
        return out
    }

    static func slug(_ id: String) -> String {
        var text = id.hasPrefix("spiffe://") ? String(id.dropFirst(9)) : id
        text = text.replacingOccurrences(of: "/*", with: "/all")
        let mapped = text.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return String(mapped).split(separator: "-").joined(separator: "-")
    }
}
