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

    /// Config, rules and every file they name, as `ward check` and `ward run` load them.
    public static func load(configPath: String) -> Result<RuntimeSnapshot, ConfigProblems> {
        ConfigLoader.load(path: configPath).flatMap(build)
    }
}
