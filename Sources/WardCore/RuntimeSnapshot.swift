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
    public var proxyProtocol: ListenerConfig.ProxyProtocol?

    package init(
        name: String, listen: SocketAddress, upstream: SocketAddress, proxyProtocol: ListenerConfig.ProxyProtocol? = nil
    ) {
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.proxyProtocol = proxyProtocol
    }
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

    package init(
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
    package func makeTLSContext() throws -> TLSServerContext {
        let verifier = try SVIDVerifier(
            bundles: bundles, policy: leafPolicy, maxChainDepth: config.maxChainDepth,
            securityLevel: config.securityLevel, verificationKeys: verificationKeys)
        return try TLSServerContext(
            identity: identity, verifier: verifier, resumption: config.resumption, maxCertSize: config.maxCertSize)
    }
}
