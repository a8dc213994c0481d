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
    /// `previous`: the running snapshot, on a reload. A name that resolves to several addresses
    /// keeps the one in use if it is still among them, and one that does not resolve now keeps
    /// its last address (a warning): a DNS outage must not hold back a new SVID or bundle.
    public static func build(
        _ config: WardConfiguration, previous: RuntimeSnapshot? = nil
    ) -> Result<RuntimeSnapshot, ConfigProblems> {
        var problems: [ConfigProblem] = []
        var warnings: [String] = []
        func resolve(_ hostPort: HostPort, kept: SocketAddress?, what: String) throws(SocketAddressError)
            -> SocketAddress
        {
            do {
                let answers = try SocketAddress.resolveAll(hostPort)
                if let kept, answers.contains(where: { $0.description == kept.description }) { return kept }
                return answers[0]
            } catch {
                guard let kept else { throw error }
                warnings.append("\(config.configPath): warning: \(what): \(error); keeping \(kept) until it resolves")
                return kept
            }
        }

        var bundles: [TrustBundle] = []
        for (domain, file) in config.trustDomains {
            do {
                let authorities = try Certificate.loadPEM(path: file.path, sizeLimit: config.maxFileSize)
                var revocations: [RevocationList] = []
                for (_, crlFile) in config.crls.filter({ $0.domain == domain }) {
                    do {
                        for list in try RevocationList.load(path: crlFile.path, sizeLimit: config.maxFileSize) {
                            // A list counts only when a CA the trust domain trusts signed it.
                            guard list.signer(among: authorities) != nil else {
                                problems.append(
                                    ConfigProblem(
                                        file: crlFile.path, line: nil,
                                        message:
                                            "CRL of \(domain) issued by \(list.issuer) is not signed by a CA of its bundle"
                                    ))
                                continue
                            }
                            revocations.append(list)
                        }
                    } catch {
                        problems.append(
                            ConfigProblem(file: crlFile.path, line: nil, message: "CRL of \(domain): \(error)"))
                    }
                }
                bundles.append(TrustBundle(trustDomain: domain, authorities: authorities, revocations: revocations))
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
                let kept = zip(previous?.config.listeners ?? [], previous?.listeners ?? []).first {
                    $0.0.name == listener.name && $0.0.upstream == listener.upstream
                }?.1.upstream
                listeners.append(
                    ResolvedListener(
                        name: listener.name, listen: try SocketAddress.resolve(listener.listen),
                        upstream: try resolve(
                            listener.upstream, kept: kept, what: "listener \(listener.name) upstream"),
                        proxyProtocol: listener.proxyProtocol))
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
                let kept = zip(previous?.config.outbound ?? [], previous?.outbound ?? []).first {
                    $0.0.name == entry.name && $0.0.target == entry.target
                }?.1.target
                outbound.append(
                    ResolvedOutbound(
                        name: entry.name, listen: listen,
                        target: try resolve(entry.target, kept: kept, what: "outbound \(entry.name) target"),
                        serverName: entry.serverName,
                        serverIDs: ServerIDs(entry.serverIDs.compactMap { try? IdentityPattern(parsing: $0) })))
            } catch {
                problems.append(
                    ConfigProblem(file: config.configPath, line: line, message: "outbound \(entry.name): \(error)"))
            }
        }

        if problems.isEmpty { problems += ownAddressProblems(config, listeners: listeners, outbound: outbound) }

        guard problems.isEmpty, let key, let ownID else { return .failure(ConfigProblems(problems)) }
        var snapshot = RuntimeSnapshot(
            config: config, identity: IdentityMaterial(chain: chain, key: key), ownID: ownID, bundles: bundles,
            ruleSet: RuleSet(compiling: config.rules, listeners: config.listeners.map(\.name)),
            listeners: listeners, outbound: outbound)
        snapshot.warnings = warnings
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
    /// connections between them (SO_REUSEPORT lets both bind). Wildcard listens (0.0.0.0, ::)
    /// overlap every address on their port. And no connection may come back to where it
    /// entered: an upstream or target that reaches one of Ward's own listen addresses is fine
    /// (a call to a service beside it, a gateway) unless following them leads back, a loop that
    /// multiplies one connection until no descriptor is left.
    static func ownAddressProblems(
        _ config: WardConfiguration, listeners: [ResolvedListener], outbound: [ResolvedOutbound]
    ) -> [ConfigProblem] {
        struct Own {
            var what: String
            var listen: SocketAddress
            var next: SocketAddress
            var key: String
            var line: Int?
        }
        let own: [Own] =
            zip(listeners, config.listeners).map {
                Own(
                    what: "listener \($0.name)", listen: $0.listen, next: $0.upstream, key: "upstream",
                    line: $1.location.line)
            }
            + zip(outbound, config.outbound).map {
                Own(
                    what: "outbound \($0.name)", listen: $0.listen, next: $0.target, key: "target",
                    line: $1.location.line)
            }
        var problems: [ConfigProblem] = []
        for (index, entry) in own.enumerated() {
            guard let first = own[..<index].first(where: { $0.listen.overlaps(entry.listen) }) else { continue }
            problems.append(
                ConfigProblem(
                    file: config.configPath, line: entry.line,
                    message:
                        "\(entry.what): listen \(entry.listen) is the same address as \(first.what)'s (\(first.listen)) "
                        + "at line \(first.line ?? 0): it would take some of its connections"))
        }
        guard problems.isEmpty else { return problems }
        let host = SocketAddress.hostAddresses()
        func successor(_ index: Int) -> Int? {
            own.firstIndex { $0.listen.isReached(by: own[index].next, hostAddresses: host) }
        }
        for start in own.indices {
            var path = [start]
            var current = start
            while let next = successor(current), !path.dropFirst().contains(next), path.count <= own.count {
                if next == start {
                    let route = (path + [start]).map { own[$0].what }.joined(separator: " -> ")
                    problems.append(
                        ConfigProblem(
                            file: config.configPath, line: own[start].line,
                            message:
                                "\(own[start].what): \(own[start].key) \(own[start].next) leads back through this Ward "
                                + "(\(route)): a loop"))
                    break
                }
                path.append(next)
                current = next
            }
        }
        return problems
    }

    /// Whether a name a listener's upstream or an outbound target is written as no longer
    /// resolves to the address in use: a reload the operator asks for then publishes, though no
    /// file changed. A name that does not resolve now has not moved.
    public static func addressesMoved(_ snapshot: RuntimeSnapshot) -> Bool {
        let written = snapshot.config.listeners.map(\.upstream) + snapshot.config.outbound.map(\.target)
        let resolved = snapshot.listeners.map(\.upstream) + snapshot.outbound.map(\.target)
        return zip(written, resolved).contains { hostPort, address in
            guard let answers = try? SocketAddress.resolveAll(hostPort) else { return false }
            return !answers.contains { $0.description == address.description }
        }
    }

    /// Config, rules and every file they name, as `ward check` and `ward run` load them.
    public static func load(
        configPath: String, previous: RuntimeSnapshot? = nil
    ) -> Result<RuntimeSnapshot, ConfigProblems> {
        ConfigLoader.load(path: configPath).flatMap { build($0, previous: previous) }
    }
}
