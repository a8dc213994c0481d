import WardIdentity
import WardPolicy
import WardSystem
import Yams

/// Reads a rules file and validates every rule against the configured listeners and trust
/// domains, so a rule that could never match is an error rather than a silent no-op.
public enum RulesLoader {
    static func load(
        path: String, listeners: Set<String>, trustDomains: Set<TrustDomain>,
        sizeLimit: Int = RegularFile.defaultSizeLimit, problems: inout [ConfigProblem]
    ) -> RuleSource? {
        let before = problems.count
        guard
            let document = YAMLDocument.load(
                path: path, displayPath: path, sizeLimit: sizeLimit, problems: &problems),
            var top = YAMLMapping(document.root, file: path, what: "rules file", problems: &problems)
        else { return nil }

        var defaultAction = RuleAction.deny
        var defaultLocation = SourceLocation(file: path, line: nil)
        if let node = top.take("default") {
            defaultAction = choice(node, "default", file: path, problems: &problems) ?? .deny
            defaultLocation.line = node.line
        }
        var mode = RuleMode.enforce
        if let node = top.take("mode") {
            mode = choice(node, "mode", file: path, problems: &problems) ?? .enforce
        }
        var rules: [Rule] = []
        if let node = top.require("rules", in: "rules file", problems: &problems) {
            if case .sequence(let sequence) = node {
                var reader = RuleReader(
                    file: path, listeners: listeners, trustDomains: trustDomains, defaultMode: mode)
                for item in sequence {
                    if let rule = reader.read(item, problems: &problems) { rules.append(rule) }
                }
            } else if case .scalar(let scalar) = node, scalar.string.isEmpty {
                // `rules:` left empty means no rules: everything falls to the default.
            } else {
                problems.append(ConfigProblem(file: path, line: node.line, message: "rules must be a list"))
            }
        }
        top.finish(in: "rules file", problems: &problems)
        guard problems.count == before else { return nil }
        return RuleSource(defaultAction: defaultAction, mode: mode, rules: rules, defaultLocation: defaultLocation)
    }
}

/// A scalar that must be one of an enum's raw values.
func choice<Value: RawRepresentable & CaseIterable>(
    _ node: Node, _ what: String, file: String, problems: inout [ConfigProblem]
) -> Value? where Value.RawValue == String {
    if case .scalar(let scalar) = node, let value = Value(rawValue: scalar.string) { return value }
    let options = Value.allCases.map { "'\($0.rawValue)'" }.joined(separator: " or ")
    problems.append(ConfigProblem(file: file, line: node.line, message: "\(what) must be \(options)"))
    return nil
}

extension RuleAction: CaseIterable {
    public static let allCases: [RuleAction] = [.allow, .deny]
}

extension RuleMode: CaseIterable {
    public static let allCases: [RuleMode] = [.enforce, .audit]
}

/// Reads the rules of one file, remembering names to reject duplicates.
private struct RuleReader {
    let file: String
    let listeners: Set<String>
    let trustDomains: Set<TrustDomain>
    let defaultMode: RuleMode
    var seen: [String: Int] = [:]

    mutating func read(_ node: Node, problems: inout [ConfigProblem]) -> Rule? {
        guard var map = YAMLMapping(node, file: file, what: "a rule", problems: &problems) else { return nil }
        let before = problems.count
        let nameNode = map.require("name", in: "rule", problems: &problems)
        let name = nameNode?.string("rule name", file: file, problems: &problems)
        if let name {
            if name == Decision.defaultRuleName {
                problems.append(
                    ConfigProblem(file: file, line: nameNode?.line, message: "rule name 'default' is reserved"))
            } else if let first = seen[name] {
                problems.append(
                    ConfigProblem(
                        file: file, line: nameNode?.line,
                        message: "duplicate rule name '\(name)' (first at line \(first))"))
            } else {
                seen[name] = nameNode?.line ?? 0
            }
        }
        let action: RuleAction? = map.require("action", in: "rule", problems: &problems).flatMap {
            choice($0, "action", file: file, problems: &problems)
        }
        var mode = defaultMode
        if let node = map.take("mode") { mode = choice(node, "mode", file: file, problems: &problems) ?? mode }
        let (from, fromLocations) = readFrom(map.require("from", in: "rule", problems: &problems), &problems)
        let selector = readTo(map.require("to", in: "rule", problems: &problems), &problems)
        let conditions = map.take("when").map { readConditions($0, &problems) } ?? RuleConditions()
        map.finish(in: "rule", problems: &problems)
        guard problems.count == before, let name, let action, let selector else { return nil }
        return Rule(
            name: name, action: action, mode: mode, from: from, fromLocations: fromLocations, to: selector,
            conditions: conditions, location: SourceLocation(file: file, line: nameNode?.line ?? node.line))
    }

    private func readFrom(_ node: Node?, _ problems: inout [ConfigProblem]) -> ([IdentityPattern], [SourceLocation]) {
        guard let node, let items = node.stringList("from", file: file, problems: &problems) else { return ([], []) }
        if items.isEmpty {
            problems.append(
                ConfigProblem(file: file, line: node.line, message: "from must name at least one SPIFFE ID or pattern"))
        }
        var patterns: [IdentityPattern] = []
        var locations: [SourceLocation] = []
        for (text, line) in items {
            do {
                let pattern = try IdentityPattern(parsing: text)
                guard trustDomains.contains(pattern.trustDomain) else {
                    problems.append(
                        ConfigProblem(
                            file: file, line: line,
                            message: "trust domain '\(pattern.trustDomain)' of '\(text)' is not in trust_domains"))
                    continue
                }
                patterns.append(pattern)
                locations.append(SourceLocation(file: file, line: line))
            } catch {
                problems.append(ConfigProblem(file: file, line: line, message: "invalid pattern '\(text)': \(error)"))
            }
        }
        return (patterns, locations)
    }

    private func readTo(_ node: Node?, _ problems: inout [ConfigProblem]) -> ListenerSelector? {
        guard let node, let items = node.stringList("to", file: file, problems: &problems) else { return nil }
        if items.contains(where: { $0.0 == "*" }) { return .all }
        if items.isEmpty {
            problems.append(ConfigProblem(file: file, line: node.line, message: "to must name a listener or \"*\""))
            return nil
        }
        for (listener, line) in items where !listeners.contains(listener) {
            problems.append(
                ConfigProblem(
                    file: file, line: line,
                    message: "unknown listener '\(listener)' (known: \(listeners.sorted().joined(separator: ", ")))"))
        }
        return .named(items.map(\.0))
    }

    private func readConditions(_ node: Node, _ problems: inout [ConfigProblem]) -> RuleConditions {
        var conditions = RuleConditions()
        guard var map = YAMLMapping(node, file: file, what: "when", problems: &problems) else { return conditions }
        if let sources = map.take("source"), let items = sources.stringList("source", file: file, problems: &problems) {
            for (text, line) in items {
                if let cidr = CIDR(parsing: text) {
                    conditions.sources.append(cidr)
                } else {
                    problems.append(
                        ConfigProblem(
                            file: file, line: line,
                            message:
                                "source '\(text)' must be an IPv4 or IPv6 address or CIDR (10.0.0.0/8, 2001:db8::/32)"))
                }
            }
            if items.isEmpty {
                problems.append(
                    ConfigProblem(file: file, line: sources.line, message: "source must list at least one CIDR"))
            }
        }
        if let hours = map.take("hours") {
            if case .scalar(let scalar) = hours, let range = HourRange(parsing: scalar.string) {
                conditions.hours = range
            } else {
                problems.append(
                    ConfigProblem(
                        file: file, line: hours.line,
                        message:
                            "hours must be \"HH:MM-HH:MM\" in UTC with different start and end (e.g. \"22:00-06:00\")"))
            }
        }
        if let ttl = map.take("max_svid_ttl") {
            if case .scalar(let scalar) = ttl, let duration = DurationParser.parse(scalar.string) {
                conditions.maxSVIDLifetimeSeconds = duration.components.seconds
            } else {
                problems.append(
                    ConfigProblem(
                        file: file, line: ttl.line, message: "max_svid_ttl must be a duration such as 30m or 24h"))
            }
        }
        map.finish(in: "when", problems: &problems)
        return conditions
    }
}
