import WardIdentity
import WardPolicy
import Yams

/// Reads a rules file and validates every rule against the configured listeners and trust
/// domains, so a rule that could never match is an error rather than a silent no-op.
public enum RulesLoader {
    static func load(
        path: String, listeners: Set<String>, trustDomains: Set<TrustDomain>,
        problems: inout [ConfigProblem]
    ) -> RuleSource? {
        let before = problems.count
        guard let document = YAMLDocument.load(path: path, displayPath: path, problems: &problems),
            var top = YAMLMapping(document.root, file: path, what: "rules file", problems: &problems)
        else { return nil }

        var defaultAction = RuleAction.deny
        if let node = top.take("default") {
            defaultAction = action(node, "default", file: path, problems: &problems) ?? .deny
        }
        var rules: [Rule] = []
        if let node = top.require("rules", in: "rules file", problems: &problems) {
            if case .sequence(let sequence) = node {
                var seen: [String: Int] = [:]
                for item in sequence {
                    if let rule = readRule(
                        item, file: path, listeners: listeners, trustDomains: trustDomains, seen: &seen,
                        problems: &problems)
                    {
                        rules.append(rule)
                    }
                }
            } else if case .scalar(let scalar) = node, scalar.string.isEmpty {
                // `rules:` left empty means no rules: everything falls to the default.
            } else {
                problems.append(ConfigProblem(file: path, line: node.line, message: "rules must be a list"))
            }
        }
        top.finish(in: "rules file", problems: &problems)
        return problems.count == before ? RuleSource(defaultAction: defaultAction, rules: rules) : nil
    }

    private static func action(_ node: Node, _ what: String, file: String, problems: inout [ConfigProblem])
        -> RuleAction?
    {
        if case .scalar(let scalar) = node, let action = RuleAction(rawValue: scalar.string) { return action }
        problems.append(ConfigProblem(file: file, line: node.line, message: "\(what) must be 'allow' or 'deny'"))
        return nil
    }

    private static func readRule(
        _ node: Node, file: String, listeners: Set<String>, trustDomains: Set<TrustDomain>,
        seen: inout [String: Int], problems: inout [ConfigProblem]
    ) -> Rule? {
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
        let ruleAction = map.require("action", in: "rule", problems: &problems).flatMap {
            action($0, "action", file: file, problems: &problems)
        }

        var from: [SPIFFEID] = []
        if let node = map.require("from", in: "rule", problems: &problems),
            let items = node.stringList("from", file: file, problems: &problems)
        {
            if items.isEmpty {
                problems.append(
                    ConfigProblem(file: file, line: node.line, message: "from must name at least one SPIFFE ID"))
            }
            for (text, line) in items {
                do {
                    let id = try SPIFFEID(parsing: text)
                    if !id.hasPath {
                        problems.append(
                            ConfigProblem(
                                file: file, line: line, message: "'\(text)' names a trust domain, not a workload"))
                    } else if !trustDomains.contains(id.trustDomain) {
                        problems.append(
                            ConfigProblem(
                                file: file, line: line,
                                message: "trust domain '\(id.trustDomain)' of '\(text)' is not in trust_domains"))
                    } else {
                        from.append(id)
                    }
                } catch {
                    problems.append(
                        ConfigProblem(file: file, line: line, message: "invalid SPIFFE ID '\(text)': \(error)"))
                }
            }
        }

        var selector: ListenerSelector?
        if let node = map.require("to", in: "rule", problems: &problems),
            let items = node.stringList("to", file: file, problems: &problems)
        {
            if items.contains(where: { $0.0 == "*" }) {
                selector = .all
            } else if items.isEmpty {
                problems.append(ConfigProblem(file: file, line: node.line, message: "to must name a listener or \"*\""))
            } else {
                for (listener, line) in items where !listeners.contains(listener) {
                    problems.append(
                        ConfigProblem(
                            file: file, line: line,
                            message:
                                "unknown listener '\(listener)' (known: \(listeners.sorted().joined(separator: ", ")))")
                    )
                }
                selector = .named(items.map(\.0))
            }
        }
        map.finish(in: "rule", problems: &problems)
        guard problems.count == before, let name, let ruleAction, let selector else { return nil }
        return Rule(name: name, action: ruleAction, from: from, to: selector)
    }
}
