import Foundation
import WardSystem
import Yams

/// A YAML file read into nodes that remember their line, with helpers that report problems
/// against that line and reject keys nobody asked for.
struct YAMLDocument {
    let file: String
    let root: Node?

    /// Reads and parses `path`; `displayPath` is what problems name.
    static func load(
        path: String, displayPath: String, sizeLimit: Int = RegularFile.defaultSizeLimit,
        problems: inout [ConfigProblem]
    ) -> YAMLDocument? {
        let text: String
        switch Result(catching: { () throws(FileReadError) -> Data in try RegularFile.read(path, limit: sizeLimit) }) {
        case .success(let data):
            guard let decoded = String(data: data, encoding: .utf8) else {
                problems.append(ConfigProblem(file: displayPath, line: nil, message: "not UTF-8 text"))
                return nil
            }
            text = decoded
        case .failure(let error):
            problems.append(ConfigProblem(file: displayPath, line: nil, message: "cannot read: \(error.reason)"))
            return nil
        }
        do {
            return YAMLDocument(file: displayPath, root: try Yams.compose(yaml: text, .basic))
        } catch let error as YamlError {
            problems.append(yamlProblem(error, file: displayPath))
        } catch {
            problems.append(ConfigProblem(file: displayPath, line: nil, message: "\(error)"))
        }
        return nil
    }

    private static func yamlProblem(_ error: YamlError, file: String) -> ConfigProblem {
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let detail = context.map { "\(problem) \($0.text)" } ?? problem
            // libyaml often notices a problem only at the next token (or the end of the file);
            // the construct it was parsing starts on the line the operator needs to fix.
            let line = context.map { min($0.mark.line, mark.line) } ?? mark.line
            return ConfigProblem(file: file, line: line, message: "invalid YAML: \(detail)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigProblem(
                file: file, line: context.mark.line,
                message: "duplicate key \(duplicates.joined(separator: ", "))")
        default:
            return ConfigProblem(file: file, line: nil, message: "invalid YAML: \(error)")
        }
    }
}

/// A mapping being read: each key taken is remembered, and `finish` reports the rest as unknown.
struct YAMLMapping {
    let file: String
    let line: Int?
    private var entries: [(key: String, keyLine: Int?, value: Node)] = []
    private var taken: Set<String> = []

    init?(_ node: Node?, file: String, what: String, problems: inout [ConfigProblem]) {
        self.file = file
        self.line = node?.mark?.line
        guard let node, case .mapping(let mapping) = node else {
            problems.append(
                ConfigProblem(file: file, line: node?.mark?.line ?? 1, message: "\(what) must be a mapping"))
            return nil
        }
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else {
                problems.append(
                    ConfigProblem(file: file, line: key.mark?.line, message: "keys must be plain strings"))
                continue
            }
            entries.append((scalar.string, key.mark?.line, value))
        }
    }

    var keys: [(key: String, keyLine: Int?, value: Node)] { entries }

    mutating func take(_ key: String) -> Node? {
        taken.insert(key)
        return entries.first { $0.key == key }?.value
    }

    mutating func require(_ key: String, in what: String, problems: inout [ConfigProblem]) -> Node? {
        if let node = take(key) { return node }
        problems.append(ConfigProblem(file: file, line: line, message: "\(what) is missing required key '\(key)'"))
        return nil
    }

    /// Reports every key that was never taken; `allowed` lists the valid ones for the message.
    func finish(in what: String, problems: inout [ConfigProblem]) {
        for entry in entries where !taken.contains(entry.key) {
            let valid = taken.sorted().joined(separator: ", ")
            problems.append(
                ConfigProblem(
                    file: file, line: entry.keyLine,
                    message: "unknown key '\(entry.key)' in \(what) (valid: \(valid))"))
        }
    }
}

extension Node {
    var line: Int? { mark?.line }

    /// The node as a string scalar, or a problem naming `what`.
    func string(_ what: String, file: String, problems: inout [ConfigProblem]) -> String? {
        if case .scalar(let scalar) = self, !scalar.string.isEmpty || scalar.style != .plain {
            return scalar.string
        }
        problems.append(ConfigProblem(file: file, line: line, message: "\(what) must be a string"))
        return nil
    }

    /// A sequence of strings; a single scalar is accepted as a one-element list.
    func stringList(_ what: String, file: String, problems: inout [ConfigProblem])
        -> [(String, Int?)]?
    {
        switch self {
        case .scalar(let scalar):
            return [(scalar.string, line)]
        case .sequence(let sequence):
            var items: [(String, Int?)] = []
            for item in sequence {
                guard case .scalar(let scalar) = item else {
                    problems.append(
                        ConfigProblem(file: file, line: item.line, message: "\(what) entries must be strings"))
                    continue
                }
                items.append((scalar.string, item.line))
            }
            return items
        default:
            problems.append(ConfigProblem(file: file, line: line, message: "\(what) must be a list of strings"))
            return nil
        }
    }
}
