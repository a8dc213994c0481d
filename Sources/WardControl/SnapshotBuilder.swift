import Foundation
import WardConfig
import WardCore
import WardIdentity
import WardPolicy
import WardSystem
import WardTLS

/// Loads every certificate and key a configuration names and checks they fit together.
///
/// Reads files and builds TLS contexts: never call it on an event loop.
public enum SnapshotBuilder {
    public static func build(_ config: WardConfiguration) -> Result<RuntimeSnapshot, ConfigProblems> {
        var problems: [ConfigProblem] = []

        var bundles: [TrustBundle] = []
        for (domain, file) in config.trustDomains {
            do {
                bundles.append(
                    TrustBundle(
                        trustDomain: domain,
                        authorities: try Certificate.loadPEM(path: file.path, sizeLimit: config.maxFileSize)))
            } catch {
                problems.append(
                    ConfigProblem(file: file.path, line: nil, message: "trust bundle of \(domain): \(error)"))
            }
        }

        var chain: [Certificate] = []
        do {
            chain = try Certificate.loadPEM(path: config.identityCert.path, sizeLimit: config.maxFileSize)
            if chain.isEmpty {
                problems.append(
                    ConfigProblem(file: config.identityCert.path, line: nil, message: "holds no certificate"))
            }
        } catch {
            problems.append(ConfigProblem(file: config.identityCert.path, line: nil, message: "\(error)"))
        }
        var key: PrivateKey?
        do {
            key = try PrivateKey.loadPEM(path: config.identityKey.path, sizeLimit: config.maxFileSize)
        } catch {
            problems.append(ConfigProblem(file: config.identityKey.path, line: nil, message: "\(error)"))
        }
        if let key, let leaf = chain.first, !key.matches(leaf) {
            problems.append(
                ConfigProblem(
                    file: config.identityKey.path, line: nil,
                    message: "private key does not match certificate \(config.identityCert.path)",
                    kind: .keyDoesNotMatchCertificate))
        }

        var ownID: SPIFFEID?
        if problems.isEmpty, !chain.isEmpty {
            do {
                let verifier = try SVIDVerifier(
                    bundles: bundles, policy: SVIDLeafPolicy(role: .server, maximumLifetimeSeconds: .max),
                    securityLevel: config.securityLevel)
                switch verifier.verifyOwn(chain: chain) {
                case .success(let id): ownID = id
                case .failure(let error):
                    problems.append(
                        ConfigProblem(file: config.identityCert.path, line: nil, message: error.description))
                }
            } catch {
                problems.append(ConfigProblem(file: config.configPath, line: nil, message: "\(error)"))
            }
        }

        if config.logPath != "-" {
            let folder = (config.logPath as NSString).deletingLastPathComponent
            if access(folder.isEmpty ? "." : folder, W_OK) != 0 {
                problems.append(
                    ConfigProblem(
                        file: config.logPath, line: nil,
                        message: "cannot write the connection log: \(CText.lastError) (\(folder))"))
            }
        }

        if case .unix(let path) = config.admin {
            do {
                _ = try AdminSocket.existingSocket(path)
            } catch {
                problems.append(ConfigProblem(file: config.configPath, line: nil, message: "admin: \(error)"))
            }
        }
        // The name was checked when the config was read; what it resolves to is what binds.
        if case .tcp(let hostPort) = config.admin, !config.adminAllowRemote {
            do {
                try AdminSocket.requireLoopback(hostPort)
            } catch {
                problems.append(ConfigProblem(file: config.configPath, line: nil, message: "admin: \(error)"))
            }
        }

        var listeners: [ResolvedListener] = []
        for listener in config.listeners {
            do {
                listeners.append(
                    ResolvedListener(
                        name: listener.name, listen: try SocketAddress.resolve(listener.listen),
                        upstream: try SocketAddress.resolve(listener.upstream), proxyProtocol: listener.proxyProtocol))
            } catch {
                problems.append(
                    ConfigProblem(file: config.configPath, line: nil, message: "listener \(listener.name): \(error)"))
            }
        }

        var outbound: [ResolvedOutbound] = []
        for entry in config.outbound {
            let line = entry.location.line
            do {
                let listen = try SocketAddress.resolve(entry.listen)
                // A name is judged by the address it resolves to, which is what binds.
                if !entry.allowRemote, listen.ipAddress?.isLoopback != true {
                    problems.append(
                        ConfigProblem(
                            file: config.configPath, line: line,
                            message:
                                "outbound \(entry.name): listen '\(entry.listen)' resolves to \(listen), not a loopback "
                                + "address; set allow_remote: true on the entry to allow it"))
                    continue
                }
                outbound.append(
                    ResolvedOutbound(
                        name: entry.name, listen: listen, target: try SocketAddress.resolve(entry.target),
                        serverName: entry.serverName,
                        serverIDs: ServerIDs(entry.serverIDs.compactMap { try? IdentityPattern(parsing: $0) })))
            } catch {
                problems.append(
                    ConfigProblem(file: config.configPath, line: line, message: "outbound \(entry.name): \(error)"))
            }
        }

        if problems.isEmpty { problems += ownAddressProblems(config, listeners: listeners, outbound: outbound) }

        guard problems.isEmpty, let key, let ownID else { return .failure(ConfigProblems(problems)) }
        let snapshot = RuntimeSnapshot(
            config: config, identity: IdentityMaterial(chain: chain, key: key), ownID: ownID, bundles: bundles,
            ruleSet: RuleSet(compiling: config.rules, listeners: config.listeners.map(\.name)),
            listeners: listeners, outbound: outbound)
        do {
            // Proves the context builds (ciphers, key type) before anything listens.
            _ = try snapshot.makeTLSContexts()
        } catch {
            return .failure(
                ConfigProblems([ConfigProblem(file: config.identityCert.path, line: nil, message: "\(error)")]))
        }
        return .success(snapshot)
    }

    /// Every address this Ward listens on must be its own: two sockets on one address split its
    /// connections between them (SO_REUSEPORT lets both bind), and a target or upstream naming
    /// one is a loop through Ward itself, which multiplies one connection until no descriptor
    /// is left. Wildcard listens (0.0.0.0, ::) overlap every address on their port.
    static func ownAddressProblems(
        _ config: WardConfiguration, listeners: [ResolvedListener], outbound: [ResolvedOutbound]
    ) -> [ConfigProblem] {
        let own: [(what: String, address: SocketAddress, line: Int?)] =
            zip(listeners, config.listeners).map { ("listener \($0.name)", $0.listen, $1.location.line) }
            + zip(outbound, config.outbound).map { ("outbound \($0.name)", $0.listen, $1.location.line) }
        var problems: [ConfigProblem] = []
        for (index, entry) in own.enumerated() {
            guard let first = own[..<index].first(where: { $0.address.overlaps(entry.address) }) else { continue }
            problems.append(
                ConfigProblem(
                    file: config.configPath, line: entry.line,
                    message:
                        "\(entry.what): listen \(entry.address) is the same address as \(first.what)'s (\(first.address)) "
                        + "at line \(first.line ?? 0): it would take some of its connections"))
        }
        func loop(_ what: String, _ key: String, _ address: SocketAddress, line: Int?) {
            guard let mine = own.first(where: { $0.address.overlaps(address) }) else { return }
            problems.append(
                ConfigProblem(
                    file: config.configPath, line: line,
                    message:
                        "\(what): \(key) \(address) is this Ward's own listen address (\(mine.what)): a loop through Ward itself"
                ))
        }
        for (resolved, entry) in zip(outbound, config.outbound) {
            loop("outbound \(entry.name)", "target", resolved.target, line: entry.location.line)
        }
        for (resolved, listener) in zip(listeners, config.listeners) {
            loop("listener \(listener.name)", "upstream", resolved.upstream, line: listener.location.line)
        }
        return problems
    }

    /// Whether a name a listener's upstream or an outbound target is written as now resolves
    /// elsewhere than when `snapshot` was built: a reload the operator asks for then publishes,
    /// though no file changed.
    public static func addressesMoved(_ snapshot: RuntimeSnapshot) -> Bool {
        let written = snapshot.config.listeners.map(\.upstream) + snapshot.config.outbound.map(\.target)
        let resolved = snapshot.listeners.map(\.upstream) + snapshot.outbound.map(\.target)
        return zip(written, resolved).contains { hostPort, address in
            (try? SocketAddress.resolve(hostPort))?.description != address.description
        }
    }

    /// Config, rules and every file they name, as `ward check` and `ward run` load them.
    public static func load(configPath: String) -> Result<RuntimeSnapshot, ConfigProblems> {
        ConfigLoader.load(path: configPath).flatMap(build)
    }
}
