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

/// An outbound entry with its addresses resolved and its `server_id` compiled.
public struct ResolvedOutbound: Sendable {
    public var name: String
    public var listen: SocketAddress
    public var target: SocketAddress
    public var serverName: String?
    public let serverIDs: ServerIDs

    package init(name: String, listen: SocketAddress, target: SocketAddress, serverName: String?, serverIDs: ServerIDs)
    {
        self.name = name
        self.listen = listen
        self.target = target
        self.serverName = serverName
        self.serverIDs = serverIDs
    }
}

/// An outbound entry's `server_id`: the IDs and patterns a server may present. Immutable, so a
/// publication's instance is shared by every worker's handshakes.
public final class ServerIDs: PeerIDRequirement, Sendable {
    public let patterns: [IdentityPattern]

    public init(_ patterns: [IdentityPattern]) { self.patterns = patterns }

    public func admits(_ id: SPIFFEID) -> Bool { patterns.contains { $0.matches(id) } }

    public var expectation: String { patterns.map(\.description).joined(separator: ", ") }
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
    public let outbound: [ResolvedOutbound]
    /// What loading noticed without refusing (a name kept at its last address), said once
    /// the snapshot is published.
    package var warnings: [String] = []
    /// Per trust domain, a digest of everything chain verification depends on (bundle and
    /// limits): after a reload, only peers whose key changed need their chain verified again.
    let verificationKeys: [TrustDomain: String]

    package init(
        config: WardConfiguration, identity: IdentityMaterial, ownID: SPIFFEID, bundles: [TrustBundle],
        ruleSet: RuleSet, listeners: [ResolvedListener], outbound: [ResolvedOutbound] = []
    ) {
        self.config = config
        self.identity = identity
        self.ownID = ownID
        self.bundles = bundles
        self.ruleSet = ruleSet
        self.listeners = listeners
        self.outbound = outbound
        let limits = Data(
            "\(config.maxChainDepth)/\(config.maxSVIDLifetime.components.seconds)/\(config.securityLevel)".utf8)
        var keys: [TrustDomain: String] = [:]
        for bundle in bundles {
            keys[bundle.trustDomain] = Digest.sha256Hex(
                lengthPrefixed: bundle.authorities.map { Data($0.sha256Hex.utf8) }
                    + bundle.revocations.map { Data("crl:\($0.sha256Hex)".utf8) } + [limits])
        }
        verificationKeys = keys
    }

    /// The leaf rules for peers in `role`: clients calling a listener, servers an outbound entry calls.
    func leafPolicy(_ role: SVIDRole) -> SVIDLeafPolicy {
        SVIDLeafPolicy(role: role, maximumLifetimeSeconds: config.maxSVIDLifetime.components.seconds)
    }

    private func makeVerifier() throws -> SVIDVerifier {
        try SVIDVerifier(
            bundles: bundles, policy: leafPolicy(.client), maxChainDepth: config.maxChainDepth,
            securityLevel: config.securityLevel, verificationKeys: verificationKeys)
    }

    /// Builds a worker's TLS contexts, each with its own verifier stores: the server one, and a
    /// client one when there are outbound entries. Parses keys: not on an event loop.
    package func makeTLSContexts() throws -> WorkerTLS {
        let server = try TLSServerContext(
            identity: identity, verifier: try makeVerifier(), resumption: config.resumption,
            maxCertSize: config.maxCertSize)
        guard !outbound.isEmpty else { return WorkerTLS(server: server, client: nil) }
        let client = try TLSClientContext(
            identity: identity, verifier: try makeVerifier(), serverPolicy: leafPolicy(.server),
            entries: outbound.count, maxCertSize: config.maxCertSize)
        return WorkerTLS(server: server, client: client)
    }
}

/// One worker's TLS contexts for one generation.
package struct WorkerTLS {
    package let server: TLSServerContext
    /// Nil when the config has no outbound entries.
    package let client: TLSClientContext?
}
