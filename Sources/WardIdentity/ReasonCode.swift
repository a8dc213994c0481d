/// Machine-readable reasons that appear in the connection log's `reason` field.
///
/// The raw values are a contract (docs/log-schema.md): log consumers match on them.
public enum ReasonCode: String, Error, Sendable, CaseIterable {
    case noClientCert = "no_client_cert"
    case unknownTrustDomain = "unknown_trust_domain"
    case untrustedChain = "untrusted_chain"
    case expired
    case notYetValid = "not_yet_valid"
    case multipleURISANs = "multiple_uri_sans"
    case noURISAN = "no_uri_san"
    case notSPIFFEID = "not_spiffe_id"
    case leafIsCA = "leaf_is_ca"
    case badKeyUsage = "bad_key_usage"
    case badEKU = "bad_eku"
    case svidLifetimeTooLong = "svid_lifetime_too_long"
    case ruleDenied = "rule_denied"
    case upstreamUnreachable = "upstream_unreachable"
    case handshakeTimeout = "handshake_timeout"
    case tlsError = "tls_error"
    case protocolVersion = "protocol_version"
    case chainTooLong = "chain_too_long"
    case listenerFull = "listener_full"
    case certTooLarge = "cert_too_large"
    case weakCrypto = "weak_crypto"
    /// A handshake message other than the peer's Certificate over OpenSSL's limit (an oversized
    /// ClientHello, for instance); an oversized Certificate is `cert_too_large`.
    case handshakeTooLarge = "handshake_too_large"
    /// Outbound: the server presented a valid SVID whose ID is not in the entry's `server_id`.
    case unexpectedServerID = "unexpected_server_id"
    /// A certificate of the peer's chain is listed by a revocation list of its trust domain.
    case certificateRevoked = "certificate_revoked"

    /// Position in `allCases`, for per-reason counters.
    public var index: Int { Self.allCases.firstIndex(of: self)! }
}
