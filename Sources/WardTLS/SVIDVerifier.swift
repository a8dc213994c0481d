internal import COpenSSL
import Glibc
import WardIdentity
import WardSystem

/// Verifies a peer's X509-SVID the SPIFFE way: read the ID, check the leaf's shape, pick the
/// bundle of the ID's own trust domain, and verify the chain against that bundle only.
///
/// One per worker (it owns `X509_STORE`s); used only on that worker's thread.
public final class SVIDVerifier {
    private let stores: [TrustDomain: OpaquePointer]
    private let revocations: [TrustDomain: [RevocationList]]
    public let policy: SVIDLeafPolicy
    /// Certificates a peer may present, leaf included.
    public let maxChainDepth: Int
    /// OpenSSL security level applied to every chain: key sizes and signature digests.
    public let securityLevel: Int32

    /// Per trust domain, a key naming its bundle and the limits above: a session verified under
    /// a key is not verified again on resumption while the key stays the same (`SessionRecord`).
    public let verificationKeys: [TrustDomain: String]

    /// Chains this verifier accepted, by the SHA-256 of each certificate presented and the leaf
    /// policy: a workload presents the same SVID on every connection until it rotates, and its
    /// replicas share intermediates, so most full handshakes meet a chain already verified. The
    /// handshake still proves the peer holds the key; only the chain's verification (most of it
    /// an ECDSA verify) and the leaf's parsing are skipped, until the earliest notAfter in the
    /// chain. Lives as long as the verifier: a publication with other bundles or limits starts
    /// empty. Refusals are never kept.
    private var verifiedChains: [String: VerifiedChain] = [:]
    static let verifiedChainCapacity = 4096

    private struct VerifiedChain {
        var id: SPIFFEID
        var serialHex: String
        var notAfter: Int64
        var validUntil: Int64?
        var lifetimeSeconds: Int64
    }

    public init(
        bundles: [TrustBundle], policy: SVIDLeafPolicy, maxChainDepth: Int = 5, securityLevel: Int = 2,
        verificationKeys: [TrustDomain: String] = [:]
    ) throws {
        self.verificationKeys = verificationKeys
        self.maxChainDepth = maxChainDepth
        self.securityLevel = Int32(securityLevel)
        var stores: [TrustDomain: OpaquePointer] = [:]
        do {
            for bundle in bundles { stores[bundle.trustDomain] = try bundle.makeStore() }
        } catch {
            for store in stores.values { X509_STORE_free(store) }
            throw error
        }
        self.stores = stores
        self.revocations = Dictionary(
            bundles.filter { !$0.revocations.isEmpty }.map { ($0.trustDomain, $0.revocations) },
            uniquingKeysWith: +)
        self.policy = policy
    }

    deinit { for store in stores.values { X509_STORE_free(store) } }

    /// Verifies `leaf` with the intermediates the peer sent; records the outcome in `check`.
    /// Returns the X509 verify error for the TLS alert, or nil when the peer is authenticated.
    func verify(
        leaf: OpaquePointer, untrusted: OpaquePointer?, into check: PeerCheck, policy: SVIDLeafPolicy? = nil,
        at time: Int64? = nil
    ) -> Int32? {
        let policy = policy ?? self.policy
        let certificate = Certificate(borrowing: leaf)
        // The peer's stack holds the leaf too; a long chain is refused before any work on it.
        if let untrusted, Int(OPENSSL_sk_num(untrusted)) > maxChainDepth {
            return refuse(
                check, .chainTooLong, X509_V_ERR_CERT_CHAIN_TOO_LONG,
                detail: "\(OPENSSL_sk_num(untrusted)) certificates, max_chain_depth is \(maxChainDepth)")
        }
        let leafDigest = certificate.sha256Hex
        check.sha256Hex = leafDigest
        let cacheKey =
            time == nil ? chainKey(leaf: leaf, leafDigest: leafDigest, untrusted: untrusted, policy: policy) : nil
        if let cacheKey, let known = verifiedChains[cacheKey] {
            let now = Int64(Glibc.time(nil))
            if now < known.validUntil ?? known.notAfter {
                check.id = known.id
                check.serialHex = known.serialHex
                check.notAfter = known.notAfter
                check.validUntil = known.validUntil
                check.lifetimeSeconds = known.lifetimeSeconds
                return nil
            }
            verifiedChains[cacheKey] = nil
        }
        check.serialHex = certificate.serialHex
        check.notAfter = certificate.notAfter
        let facts = certificate.svidLeaf
        check.lifetimeSeconds = facts.lifetimeSeconds

        let id: SPIFFEID
        switch policy.identity(of: facts) {
        case .success(let parsed): id = parsed
        case .failure(let reason): return refuse(check, reason, X509_V_ERR_APPLICATION_VERIFICATION)
        }
        check.id = id
        if let reason = policy.checkShape(of: facts) {
            return refuse(check, reason, X509_V_ERR_APPLICATION_VERIFICATION)
        }
        guard let store = stores[id.trustDomain] else {
            return refuse(check, .unknownTrustDomain, X509_V_ERR_APPLICATION_VERIFICATION)
        }
        var error = verifyChain(leaf: leaf, untrusted: untrusted, store: store, check: check, at: time)
        if error == nil, let lists = revocations[id.trustDomain] {
            error = checkRevocation(leaf: leaf, untrusted: untrusted, lists: lists, check: check)
        }
        if error == nil, let cacheKey, let notAfter = check.notAfter {
            if verifiedChains.count >= Self.verifiedChainCapacity { verifiedChains.removeAll(keepingCapacity: true) }
            verifiedChains[cacheKey] = VerifiedChain(
                id: id, serialHex: check.serialHex ?? "", notAfter: notAfter, validUntil: check.validUntil,
                lifetimeSeconds: check.lifetimeSeconds)
        }
        return error
    }

    /// Names a presented chain under a leaf policy: the digests of every certificate, in order.
    private func chainKey(
        leaf: OpaquePointer, leafDigest: String, untrusted: OpaquePointer?, policy: SVIDLeafPolicy
    ) -> String {
        var key = "\(policy.role)/\(policy.maximumLifetimeSeconds)/" + leafDigest
        if let untrusted {
            for index in 0..<OPENSSL_sk_num(untrusted) {
                guard let certificate = OPENSSL_sk_value(untrusted, index) else { continue }
                let pointer = OpaquePointer(certificate)
                // A client's stack starts with the leaf itself, whose digest is already in the key.
                key += "/" + (pointer == leaf ? "" : Certificate(borrowing: pointer).sha256Hex)
            }
        }
        return key
    }

    /// Refuses a chain whose leaf, or an intermediate the peer sent, a revocation list names.
    private func checkRevocation(
        leaf: OpaquePointer, untrusted: OpaquePointer?, lists: [RevocationList], check: PeerCheck
    ) -> Int32? {
        var certificates = [leaf]
        if let untrusted {
            for index in 0..<OPENSSL_sk_num(untrusted) {
                if let certificate = OPENSSL_sk_value(untrusted, index) {
                    certificates.append(OpaquePointer(certificate))
                }
            }
        }
        for (depth, certificate) in certificates.enumerated() {
            guard let list = lists.first(where: { $0.lists(certificate) }) else { continue }
            let which = depth == 0 ? "leaf" : "an intermediate"
            return refuse(
                check, .certificateRevoked, X509_V_ERR_CERT_REVOKED,
                detail:
                    "\(which) serial \(Certificate(borrowing: certificate).serialHex) is revoked by the CRL of \(list.issuer)"
            )
        }
        return nil
    }

    private func verifyChain(
        leaf: OpaquePointer, untrusted: OpaquePointer?, store: OpaquePointer, check: PeerCheck, at time: Int64?
    ) -> Int32? {
        guard let context = X509_STORE_CTX_new() else {
            return refuse(check, .tlsError, X509_V_ERR_OUT_OF_MEM, detail: "X509_STORE_CTX_new failed")
        }
        defer { X509_STORE_CTX_free(context) }
        guard X509_STORE_CTX_init(context, store, leaf, untrusted) == 1 else {
            return refuse(
                check, .tlsError, X509_V_ERR_UNSPECIFIED, detail: OpenSSLError.drain("X509_STORE_CTX_init").description)
        }
        // A context built here does not inherit the SSL_CTX's security level: without this,
        // RSA-512 leaves and SHA-1-signed chains verify.
        X509_VERIFY_PARAM_set_auth_level(X509_STORE_CTX_get0_param(context), securityLevel)
        if let time { X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(context), time_t(time)) }
        if X509_verify_cert(context) == 1 {
            if let chain = X509_STORE_CTX_get0_chain(context) {
                check.validUntil = (0..<OPENSSL_sk_num(chain)).compactMap { index in
                    OPENSSL_sk_value(chain, index).map { Certificate(borrowing: OpaquePointer($0)).notAfter }
                }.min()
            }
            return nil
        }
        let error = X509_STORE_CTX_get_error(context)
        ERR_clear_error()
        let reason: ReasonCode
        switch error {
        case X509_V_ERR_CERT_HAS_EXPIRED: reason = .expired
        case X509_V_ERR_CERT_NOT_YET_VALID: reason = .notYetValid
        case X509_V_ERR_EE_KEY_TOO_SMALL, X509_V_ERR_CA_KEY_TOO_SMALL, X509_V_ERR_CA_MD_TOO_WEAK:
            let depth = X509_STORE_CTX_get_error_depth(context)
            let which = depth == 0 ? "leaf" : "certificate \(depth) of the chain"
            let text = CText.string(X509_verify_cert_error_string(Int(error)), or: "weak key or digest")
            return refuse(check, .weakCrypto, error, detail: "\(which): \(text) (security_level \(securityLevel))")
        default: reason = .untrustedChain
        }
        return refuse(
            check, reason, error,
            detail: CText.string(X509_verify_cert_error_string(Int(error)), or: "X509 verify error \(error)"))
    }

    private func refuse(_ check: PeerCheck, _ reason: ReasonCode, _ error: Int32, detail: String? = nil) -> Int32 {
        check.reason = reason
        check.detail = detail
        return error
    }

    /// Verifies Ward's own SVID chain in the server role: now at load time, or at `time` (epoch
    /// seconds) for a log checkpoint it signed back then.
    public func verifyOwn(chain: [Certificate], at time: Int64? = nil) -> Result<SPIFFEID, OwnSVIDError> {
        guard let leaf = chain.first else {
            return .failure(OwnSVIDError(reason: .noClientCert, detail: "no certificate"))
        }
        let check = PeerCheck()
        guard let untrusted = OPENSSL_sk_new_null() else {
            return .failure(OwnSVIDError(reason: .tlsError, detail: "out of memory"))
        }
        defer { OPENSSL_sk_free(untrusted) }
        for certificate in chain.dropFirst() { OPENSSL_sk_push(untrusted, UnsafeRawPointer(certificate.x509)) }
        // Ward's own lifetime is the issuer's business; the cap defends against peers.
        let ownPolicy = SVIDLeafPolicy(role: .server, maximumLifetimeSeconds: .max)
        if verify(leaf: leaf.x509, untrusted: untrusted, into: check, policy: ownPolicy, at: time) == nil,
            let id = check.id
        {
            return .success(id)
        }
        return .failure(OwnSVIDError(reason: check.reason ?? .tlsError, detail: check.detail, id: check.id))
    }
}

public struct OwnSVIDError: Error, Sendable, CustomStringConvertible {
    public var reason: ReasonCode
    public var detail: String?
    public var id: SPIFFEID?

    public var description: String {
        let subject = id.map { "own SVID \($0)" } ?? "own SVID"
        return "\(subject) is not valid for its trust domain: \(reason.rawValue)" + (detail.map { " (\($0))" } ?? "")
    }
}
