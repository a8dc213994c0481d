import Foundation
import WardConfig
import WardIdentity
import WardPolicy
import WardSystem
import WardTLS

/// A listener with its addresses resolved.
public struct ResolvedListener: Sendable {
    public var name: String
    public var listen: SocketAddress
    public var upstream: SocketAddress
}

/// Everything a worker needs, loaded and validated as one unit. Immutable: a reload builds a
/// new one rather than changing this.
public struct RuntimeSnapshot: Sendable {
    public let config: WardConfiguration
    public let identity: IdentityMaterial
    public let ownID: SPIFFEID
    public let bundles: [TrustBundle]
    public let ruleSet: RuleSet
    public let listeners: [ResolvedListener]
    /// Per trust domain, a digest of everything chain verification depends on (bundle and
    /// limits): after a reload, only peers whose key changed need their chain verified again.
    let verificationKeys: [TrustDomain: String]

    init(
        config: WardConfiguration, identity: IdentityMaterial, ownID: SPIFFEID, bundles: [TrustBundle],
        ruleSet: RuleSet, listeners: [ResolvedListener]
    ) {
        self.config = config
        self.identity = identity
        self.ownID = ownID
        self.bundles = bundles
        self.ruleSet = ruleSet
        self.listeners = listeners
        let limits = Data(
            "\(config.maxChainDepth)/\(config.maxSVIDLifetime.components.seconds)/\(config.securityLevel)".utf8)
        var keys: [TrustDomain: String] = [:]
        for bundle in bundles {
            keys[bundle.trustDomain] = Digest.sha256Hex(
                lengthPrefixed: bundle.authorities.map { Data($0.sha256Hex.utf8) } + [limits])
        }
        verificationKeys = keys
    }

    var leafPolicy: SVIDLeafPolicy {
        SVIDLeafPolicy(role: .client, maximumLifetimeSeconds: config.maxSVIDLifetime.components.seconds)
    }

    /// Builds a TLS context with its own verifier stores. Parses keys: not on an event loop.
    func makeTLSContext() throws -> TLSServerContext {
        let verifier = try SVIDVerifier(
            bundles: bundles, policy: leafPolicy, maxChainDepth: config.maxChainDepth,
            securityLevel: config.securityLevel)
        return try TLSServerContext(
            identity: identity, verifier: verifier, resumption: config.resumption, maxCertSize: config.maxCertSize)
    }
}

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
                    message: "private key does not match certificate \(config.identityCert.path)"))
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

        var listeners: [ResolvedListener] = []
        for listener in config.listeners {
            do {
                listeners.append(
                    ResolvedListener(
                        name: listener.name, listen: try SocketAddress.resolve(listener.listen),
                        upstream: try SocketAddress.resolve(listener.upstream)))
            } catch {
                problems.append(
                    ConfigProblem(file: config.configPath, line: nil, message: "listener \(listener.name): \(error)"))
            }
        }

        guard problems.isEmpty, let key, let ownID else { return .failure(ConfigProblems(problems)) }
        let snapshot = RuntimeSnapshot(
            config: config, identity: IdentityMaterial(chain: chain, key: key), ownID: ownID, bundles: bundles,
            ruleSet: RuleSet(compiling: config.rules, listeners: config.listeners.map(\.name)),
            listeners: listeners)
        do {
            // Proves the context builds (ciphers, key type) before anything listens.
            _ = try snapshot.makeTLSContext()
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
