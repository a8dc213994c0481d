import Foundation
import WardIdentity
import WardPolicy
import WardSystem
import Yams

/// Loads `ward.yaml` and the rules file it names into a validated `WardConfiguration`.
///
/// Reads files: never call it on an event loop.
public enum ConfigLoader {
    public static func load(path: String) -> Result<WardConfiguration, ConfigProblems> {
        var problems: [ConfigProblem] = []
        let config = load(path: path, problems: &problems)
        if let config, problems.isEmpty { return .success(config) }
        return .failure(ConfigProblems(problems))
    }

    private static func load(path: String, problems: inout [ConfigProblem]) -> WardConfiguration? {
        guard let document = YAMLDocument.load(path: path, displayPath: path, problems: &problems),
            var top = YAMLMapping(document.root, file: path, what: "config", problems: &problems)
        else { return nil }
        let folder = (path as NSString).deletingLastPathComponent
        func file(_ node: Node?, _ what: String) -> ConfigFile? {
            guard let node, let text = node.string(what, file: path, problems: &problems) else { return nil }
            let resolved = text.hasPrefix("/") || folder.isEmpty ? text : folder + "/" + text
            return ConfigFile(path: resolved, line: node.line)
        }

        var identityCert: ConfigFile?
        var identityKey: ConfigFile?
        if let node = top.require("identity", in: "config", problems: &problems),
            var identity = YAMLMapping(node, file: path, what: "identity", problems: &problems)
        {
            identityCert = file(identity.require("cert", in: "identity", problems: &problems), "identity.cert")
            identityKey = file(identity.require("key", in: "identity", problems: &problems), "identity.key")
            identity.finish(in: "identity", problems: &problems)
        }

        var trustDomains: [(domain: TrustDomain, bundle: ConfigFile)] = []
        if let node = top.require("trust_domains", in: "config", problems: &problems),
            let domains = YAMLMapping(node, file: path, what: "trust_domains", problems: &problems)
        {
            for entry in domains.keys {
                do {
                    let domain = try TrustDomain(parsing: entry.key)
                    if let bundle = file(entry.value, "bundle of \(entry.key)") {
                        trustDomains.append((domain, bundle))
                    }
                } catch {
                    problems.append(
                        ConfigProblem(
                            file: path, line: entry.keyLine, message: "invalid trust domain '\(entry.key)': \(error)"))
                }
            }
            if domains.keys.isEmpty {
                problems.append(
                    ConfigProblem(
                        file: path, line: node.line, message: "trust_domains must name at least one trust domain"))
            }
        }
        trustDomains.sort { $0.domain < $1.domain }

        var crls: [(domain: TrustDomain, file: ConfigFile)] = []
        if let node = top.take("crls"), let lists = YAMLMapping(node, file: path, what: "crls", problems: &problems) {
            for entry in lists.keys {
                guard let domain = try? TrustDomain(parsing: entry.key),
                    trustDomains.contains(where: { $0.domain == domain })
                else {
                    problems.append(
                        ConfigProblem(
                            file: path, line: entry.keyLine,
                            message: "crls: '\(entry.key)' is not a trust domain of trust_domains"))
                    continue
                }
                if let file = file(entry.value, "CRL of \(entry.key)") { crls.append((domain, file)) }
            }
        }
        crls.sort { $0.domain < $1.domain }

        let outboundNode = top.take("outbound")
        let outbound = outboundNode.flatMap { readOutbound($0, file: path, problems: &problems) }
        // A job that only calls out has no listeners, and then needs no rules either.
        let listenersNode =
            outbound == nil ? top.require("listeners", in: "config", problems: &problems) : top.take("listeners")
        var listeners: [ListenerConfig]? = outbound == nil ? nil : []
        if let listenersNode {
            if outbound != nil, case .sequence(let sequence) = listenersNode, sequence.isEmpty {
                listeners = []
            } else {
                listeners = readListeners(listenersNode, file: path, problems: &problems)
            }
        }
        let rulesNode =
            listeners?.isEmpty == false ? top.require("rules", in: "config", problems: &problems) : top.take("rules")
        let rulesFile = file(rulesNode, "rules")
        if let listeners, let outbound {
            checkNames(listeners: listeners, outbound: outbound, file: path, problems: &problems)
        }

        var logPath = "-"
        if let node = top.take("log"), let text = node.string("log", file: path, problems: &problems) {
            logPath = text == "-" || text.hasPrefix("/") || folder.isEmpty ? text : folder + "/" + text
        }

        var workers: Int?
        if let node = top.take("workers") {
            if case .scalar(let scalar) = node, scalar.string == "auto" {
                workers = nil
            } else if case .scalar(let scalar) = node, let count = Int(scalar.string), (1...256).contains(count) {
                workers = count
            } else {
                problems.append(
                    ConfigProblem(
                        file: path, line: node.line, message: "workers must be 'auto' or a number from 1 to 256"))
            }
        }

        func duration(_ key: String, default value: Duration) -> Duration {
            guard let node = top.take(key) else { return value }
            if case .scalar(let scalar) = node, let parsed = DurationParser.parse(scalar.string) { return parsed }
            problems.append(
                ConfigProblem(
                    file: path, line: node.line, message: "\(key) must be a duration such as 500ms, 10s, 5m or 1h"))
            return value
        }
        let handshakeTimeout = duration("handshake_timeout", default: WardConfiguration.defaultHandshakeTimeout)
        let idleTimeout = duration("idle_timeout", default: WardConfiguration.defaultIdleTimeout)
        let maxLifetime = duration("max_svid_lifetime", default: WardConfiguration.defaultMaxSVIDLifetime)
        let connectTimeout = duration(
            "upstream_connect_timeout", default: WardConfiguration.defaultUpstreamConnectTimeout)
        let checkpointInterval = duration(
            "log_checkpoint_interval", default: WardConfiguration.defaultLogCheckpointInterval)
        let svidMinRemaining = duration("svid_min_remaining", default: WardConfiguration.defaultSVIDMinRemaining)
        func flag(_ key: String) -> Bool {
            guard let node = top.take(key) else { return false }
            if case .scalar(let scalar) = node, let value = Bool(scalar.string) { return value }
            problems.append(ConfigProblem(file: path, line: node.line, message: "\(key) must be true or false"))
            return false
        }
        let logChain = flag("log_chain")
        var resumption = false
        if let node = top.take("resumption") {
            if case .scalar(let scalar) = node, ["on", "off", "true", "false"].contains(scalar.string) {
                resumption = scalar.string == "on" || scalar.string == "true"
            } else {
                problems.append(ConfigProblem(file: path, line: node.line, message: "resumption must be on or off"))
            }
        }
        func count(_ key: String, default value: Int, range: ClosedRange<Int>) -> Int {
            guard let node = top.take(key) else { return value }
            if case .scalar(let scalar) = node, let parsed = Int(scalar.string), range.contains(parsed) {
                return parsed
            }
            problems.append(
                ConfigProblem(
                    file: path, line: node.line,
                    message: "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound)"))
            return value
        }
        let maxConnections = count(
            "max_connections", default: WardConfiguration.defaultMaxConnections, range: 1...10_000_000)
        let maxChainDepth = count("max_chain_depth", default: WardConfiguration.defaultMaxChainDepth, range: 1...20)
        let maxCertSize = count(
            "max_cert_size", default: WardConfiguration.defaultMaxCertSize, range: 1024...1_048_576)
        let checkpointLines = count(
            "log_checkpoint_lines", default: WardConfiguration.defaultLogCheckpointLines, range: 1...10_000_000)
        let securityLevel = count(
            "security_level", default: WardConfiguration.defaultSecurityLevel, range: 2...5)
        let maxFileSize = count("max_file_size", default: RegularFile.defaultSizeLimit, range: 1024...(1 << 40))
        var peerExpiry = PeerExpiry.close
        if let node = top.take("peer_expiry") {
            if case .scalar(let scalar) = node, let value = PeerExpiry(rawValue: scalar.string) {
                peerExpiry = value
            } else {
                problems.append(
                    ConfigProblem(file: path, line: node.line, message: "peer_expiry must be close or keep"))
            }
        }
        let user = top.take("user").flatMap { $0.string("user", file: path, problems: &problems) }
        let group = top.take("group").flatMap { $0.string("group", file: path, problems: &problems) }
        var admin = AdminAddress.unix(path: AdminAddress.defaultPath)
        var adminIsDefault = true
        let allowRemote = flag("admin_allow_remote")
        if let node = top.take("admin"), let text = node.string("admin", file: path, problems: &problems) {
            if let parsed = AdminAddress(parsing: text, relativeTo: folder) {
                admin = parsed
                adminIsDefault = false
                if !parsed.isLocal && !allowRemote {
                    problems.append(
                        ConfigProblem(
                            file: path, line: node.line,
                            message:
                                "admin '\(text)' is not loopback or a Unix socket; set admin_allow_remote: true to allow it"
                        ))
                }
            } else {
                problems.append(
                    ConfigProblem(
                        file: path, line: node.line, message: "admin must be a Unix socket path or a loopback HOST:PORT"
                    ))
            }
        }
        top.finish(in: "config", problems: &problems)

        var rules: RuleSource?
        if let rulesFile, let listeners {
            rules = RulesLoader.load(
                path: rulesFile.path, listeners: Set(listeners.map(\.name)),
                trustDomains: Set(trustDomains.map(\.domain)), sizeLimit: maxFileSize, problems: &problems)
        } else if rulesNode == nil {
            rules = RuleSource(defaultAction: .deny, rules: [], defaultLocation: SourceLocation(file: path, line: nil))
        }
        for entry in outbound ?? [] {
            for (pattern, line) in zip(entry.serverIDs, entry.serverIDLines) {
                guard let domain = try? IdentityPattern(parsing: pattern).trustDomain,
                    !trustDomains.contains(where: { $0.domain == domain })
                else { continue }
                problems.append(
                    ConfigProblem(
                        file: path, line: line,
                        message: "server_id '\(pattern)': trust domain \(domain) has no bundle in trust_domains"))
            }
        }

        guard let identityCert, let identityKey, let listeners, let rules else { return nil }
        var configuration = WardConfiguration(
            configPath: path, identityCert: identityCert, identityKey: identityKey,
            trustDomains: trustDomains, listeners: listeners, rulesFile: rulesFile, rules: rules,
            logPath: logPath, workers: workers, handshakeTimeout: handshakeTimeout,
            idleTimeout: idleTimeout, upstreamConnectTimeout: connectTimeout, maxSVIDLifetime: maxLifetime,
            admin: admin, svidMinRemaining: svidMinRemaining, logChain: logChain, adminIsDefault: adminIsDefault)
        configuration.resumption = resumption
        configuration.crls = crls
        configuration.outbound = (outbound ?? []).map(\.config)
        configuration.maxConnections = maxConnections
        configuration.maxChainDepth = maxChainDepth
        configuration.maxCertSize = maxCertSize
        configuration.adminAllowRemote = allowRemote
        configuration.logCheckpointLines = checkpointLines
        configuration.logCheckpointInterval = checkpointInterval
        configuration.securityLevel = securityLevel
        configuration.maxFileSize = maxFileSize
        configuration.peerExpiry = peerExpiry
        configuration.user = user
        configuration.group = group
        return configuration
    }

    private static func readListeners(_ node: Node, file: String, problems: inout [ConfigProblem])
        -> [ListenerConfig]?
    {
        guard case .sequence(let sequence) = node, !sequence.isEmpty else {
            problems.append(ConfigProblem(file: file, line: node.line, message: "listeners must be a non-empty list"))
            return nil
        }
        var listeners: [ListenerConfig] = []
        var lines: [String: Int] = [:]
        for item in sequence {
            guard var map = YAMLMapping(item, file: file, what: "a listener", problems: &problems) else { continue }
            let nameNode = map.require("name", in: "listener", problems: &problems)
            let name = nameNode?.string("listener name", file: file, problems: &problems)
            let listen = hostPort("listen", of: &map, in: "listener", file: file, problems: &problems)?.value
            let upstream = hostPort("upstream", of: &map, in: "listener", file: file, problems: &problems)?.value
            var proxyProtocol: ListenerConfig.ProxyProtocol?
            if let node = map.take("proxy_protocol"),
                let text = node.string("proxy_protocol", file: file, problems: &problems)
            {
                proxyProtocol = ListenerConfig.ProxyProtocol(rawValue: text)
                if proxyProtocol == nil {
                    problems.append(
                        ConfigProblem(
                            file: file, line: node.line, message: "proxy_protocol '\(text)' must be v2"))
                }
            }
            map.finish(in: "listener", problems: &problems)
            guard let name, let listen, let upstream else { continue }
            if name == "*" {
                problems.append(
                    ConfigProblem(file: file, line: nameNode?.line, message: "listener name '*' is reserved"))
                continue
            }
            if let first = lines[name] {
                problems.append(
                    ConfigProblem(
                        file: file, line: nameNode?.line,
                        message: "duplicate listener name '\(name)' (first at line \(first))"))
                continue
            }
            lines[name] = nameNode?.line ?? 0
            listeners.append(
                ListenerConfig(
                    name: name, listen: listen, upstream: upstream, proxyProtocol: proxyProtocol,
                    location: SourceLocation(file: file, line: nameNode?.line ?? item.line)))
        }
        return listeners
    }
}

extension ConfigLoader {
    /// An outbound entry as read, with the line of each `server_id` item for later checks.
    fileprivate struct ReadOutbound {
        var config: OutboundConfig
        var serverIDs: [String] { config.serverIDs }
        var serverIDLines: [Int?]
    }

    fileprivate static func readOutbound(_ node: Node, file: String, problems: inout [ConfigProblem]) -> [ReadOutbound]?
    {
        guard case .sequence(let sequence) = node, !sequence.isEmpty else {
            problems.append(ConfigProblem(file: file, line: node.line, message: "outbound must be a non-empty list"))
            return nil
        }
        var entries: [ReadOutbound] = []
        for item in sequence {
            guard var map = YAMLMapping(item, file: file, what: "an outbound entry", problems: &problems) else {
                continue
            }
            let nameNode = map.require("name", in: "outbound entry", problems: &problems)
            let name = nameNode?.string("outbound name", file: file, problems: &problems)
            let listen = hostPort("listen", of: &map, in: "outbound entry", file: file, problems: &problems)
            let target = hostPort("target", of: &map, in: "outbound entry", file: file, problems: &problems)
            var serverIDs: [String] = []
            var serverIDLines: [Int?] = []
            var serverIDsValid = false
            if let node = map.require("server_id", in: "outbound entry", problems: &problems) {
                let items: [Node]
                if case .sequence(let list) = node { items = Array(list) } else { items = [node] }
                serverIDsValid = !items.isEmpty
                if items.isEmpty {
                    problems.append(
                        ConfigProblem(
                            file: file, line: node.line,
                            message: "server_id must name at least one SPIFFE ID or pattern"))
                }
                for item in items {
                    guard let text = item.string("server_id", file: file, problems: &problems) else {
                        serverIDsValid = false
                        continue
                    }
                    do {
                        _ = try IdentityPattern(parsing: text)
                        serverIDs.append(text)
                        serverIDLines.append(item.line)
                    } catch {
                        serverIDsValid = false
                        problems.append(
                            ConfigProblem(file: file, line: item.line, message: "server_id '\(text)': \(error)"))
                    }
                }
            }
            var serverName: String?
            if let node = map.take("server_name"),
                let text = node.string("server_name", file: file, problems: &problems)
            {
                if Self.isHostName(text) {
                    serverName = text
                } else {
                    problems.append(
                        ConfigProblem(
                            file: file, line: node.line,
                            message:
                                "server_name '\(text)' must be a DNS name (letters, digits, '-' and '.', up to 253)"))
                }
            }
            var allowRemote = false
            if let node = map.take("allow_remote") {
                if case .scalar(let scalar) = node, let value = Bool(scalar.string) {
                    allowRemote = value
                } else {
                    problems.append(
                        ConfigProblem(file: file, line: node.line, message: "allow_remote must be true or false"))
                }
            }
            map.finish(in: "outbound entry", problems: &problems)
            guard let name, let (listen, listenLine) = listen, let (target, _) = target, serverIDsValid else {
                continue
            }
            // A literal address is judged here; a name is judged by what it resolves to, at load.
            if !allowRemote, let ip = IPAddress(parsing: Substring(listen.host)), !ip.isLoopback {
                problems.append(
                    ConfigProblem(
                        file: file, line: listenLine,
                        message:
                            "listen '\(listen)' is not a loopback address; set allow_remote: true on the entry to allow it"
                    ))
                continue
            }
            entries.append(
                ReadOutbound(
                    config: OutboundConfig(
                        name: name, listen: listen, target: target, serverIDs: serverIDs, serverName: serverName,
                        allowRemote: allowRemote,
                        location: SourceLocation(file: file, line: nameNode?.line ?? item.line)),
                    serverIDLines: serverIDLines))
        }
        return entries
    }

    /// A required `HOST:PORT` key of a listener or outbound entry, with its line.
    fileprivate static func hostPort(
        _ key: String, of map: inout YAMLMapping, in what: String, file: String, problems: inout [ConfigProblem]
    ) -> (value: HostPort, line: Int?)? {
        guard let node = map.require(key, in: what, problems: &problems),
            let text = node.string(key, file: file, problems: &problems)
        else { return nil }
        guard let parsed = HostPort(parsing: text) else {
            problems.append(
                ConfigProblem(
                    file: file, line: node.line,
                    message: "\(key) '\(text)' must be HOST:PORT (IPv6 as [ADDR]:PORT, port 1-65535)"))
            return nil
        }
        return (parsed, node.line)
    }

    /// Names are unique across listeners and outbound entries: logs and metrics name either.
    fileprivate static func checkNames(
        listeners: [ListenerConfig], outbound: [ReadOutbound], file: String, problems: inout [ConfigProblem]
    ) {
        var seen: [String: Int] = [:]
        for listener in listeners { seen[listener.name] = listener.location.line ?? 0 }
        for entry in outbound {
            let name = entry.config.name
            if name == "*" {
                problems.append(
                    ConfigProblem(
                        file: file, line: entry.config.location.line, message: "outbound name '*' is reserved"))
            } else if let first = seen[name] {
                problems.append(
                    ConfigProblem(
                        file: file, line: entry.config.location.line,
                        message:
                            "duplicate name '\(name)' (first at line \(first)): listener and outbound names must be unique"
                    ))
            } else {
                seen[name] = entry.config.location.line ?? 0
            }
        }
    }

    /// An SNI value: a DNS name, no IP address needed or wanted.
    public static func isHostName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.utf8.count) && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.utf8.allSatisfy { byte in
                    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || byte == 0x2D
                }
        }
    }

    /// Only the `admin:` address of a config, read without validating the rest, so `ward reload`
    /// can reach a running Ward even while the files it is asked to reload are broken.
    public static func adminAddress(configPath: String) -> AdminAddress? {
        guard let data = try? RegularFile.read(configPath), let text = String(data: data, encoding: .utf8),
            let root = try? Yams.compose(yaml: text, .basic), case .mapping(let mapping) = root
        else { return nil }
        let folder = (configPath as NSString).deletingLastPathComponent
        for (key, value) in mapping {
            if case .scalar(let name) = key, name.string == "admin", case .scalar(let address) = value {
                return AdminAddress(parsing: address.string, relativeTo: folder)
            }
        }
        return .unix(path: AdminAddress.defaultPath)
    }
}
