internal import COpenSSL
import WardIdentity

/// The CA certificates of one trust domain. An empty bundle is valid and authenticates nobody.
public struct TrustBundle: Sendable {
    public let trustDomain: TrustDomain
    public let authorities: [Certificate]
    /// Revocation lists signed by one of `authorities` (`crls:`): a listed certificate is refused.
    public let revocations: [RevocationList]

    public init(trustDomain: TrustDomain, authorities: [Certificate], revocations: [RevocationList] = []) {
        self.trustDomain = trustDomain
        self.authorities = authorities
        self.revocations = revocations
    }

    /// A fresh `X509_STORE` holding this bundle. Each worker builds its own so that chain
    /// verification never contends on another thread's store lock.
    func makeStore() throws -> OpaquePointer {
        guard let store = X509_STORE_new() else { throw OpenSSLError.drain("X509_STORE_new") }
        for authority in authorities where X509_STORE_add_cert(store, authority.x509) != 1 {
            X509_STORE_free(store)
            throw OpenSSLError.drain("X509_STORE_add_cert")
        }
        // Every bundle certificate is a trust anchor, self-signed or not (SPIFFE trust bundles).
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
        return store
    }
}
