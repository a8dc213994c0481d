internal import COpenSSL
internal import CWardShims
import WardIdentity

/// Ward's own SVID: the leaf, its intermediates, and the key, checked to match.
public struct IdentityMaterial: Sendable {
    public let chain: [Certificate]
    public let key: PrivateKey

    public init(chain: [Certificate], key: PrivateKey) {
        self.chain = chain
        self.key = key
    }
}

/// The ex_data slot on each `SSL` that points at its connection's `PeerCheck` (unretained:
/// the connection owns the check and frees the `SSL` before itself).
let peerCheckIndex: Int32 = WardShim_SSL_get_ex_new_index()

/// A server-side `SSL_CTX` for mutual TLS with SPIFFE peers.
///
/// Building one parses keys and fetches algorithms: do not build on an event loop. Each worker
/// builds its own so handshakes never share a context's locks across threads.
public final class TLSServerContext {
    let context: OpaquePointer
    /// Retained for the callback's `arg`; released in deinit, the one release point.
    private let verifierReference: Unmanaged<SVIDVerifier>

    /// `resumption` turns on TLS 1.3 resumption: one ticket per handshake, naming a session kept
    /// in this context's cache for `sessionLifetimeSeconds`.
    public init(
        identity: IdentityMaterial, verifier: SVIDVerifier, resumption: Bool = false, maxCertSize: Int = 32 * 1024
    ) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw OpenSSLError.drain("SSL_CTX_new") }
        self.context = context
        self.verifierReference = Unmanaged.passRetained(verifier)

        guard WardShim_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1,
            WardShim_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1
        else { throw OpenSSLError.drain("setting TLS versions") }
        // Handshake signatures and groups follow the same level as peers' chains.
        SSL_CTX_set_security_level(context, verifier.securityLevel)
        SSL_CTX_set_options(
            context,
            WardShim_SSL_OP_NO_RENEGOTIATION() | WardShim_SSL_OP_NO_COMPRESSION()
                | WardShim_SSL_OP_CIPHER_SERVER_PREFERENCE() | WardShim_SSL_OP_NO_TICKET()
                // A peer that closes TCP without close_notify ends its stream like a FIN would:
                // the proxied byte stream has no truncation signal of its own to protect.
                | WardShim_SSL_OP_IGNORE_UNEXPECTED_EOF())
        // A certificate message larger than this ends the handshake before it is parsed.
        WardShim_SSL_CTX_set_max_cert_list(context, maxCertSize)
        // Idle connections give their 34 KiB of record buffers back.
        _ = WardShim_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
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
        // With read-ahead (set per stream), one recv may bring this much: several records.
        SSL_CTX_set_default_read_buffer_len(context, TLSStream.readBufferSize)
        _ = SSL_CTX_set_num_tickets(context, resumption ? 1 : 0)
        _ = SSL_CTX_set_timeout(context, Self.sessionLifetimeSeconds)
        // Sessions made with client verification may only resume in the same context id.
        let sessionContext = Array("ward".utf8)
        guard SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count)) == 1 else {
            throw OpenSSLError.drain("setting the session id context")
        }
        guard WardShim_SSL_CTX_set1_groups_list(context, "X25519:P-256:P-384") == 1,
            SSL_CTX_set_cipher_list(context, "ECDHE+AESGCM:ECDHE+CHACHA20") == 1,
            // AES-128 first: as strong as the P-256 keys in use, and cheaper per byte.
            SSL_CTX_set_ciphersuites(
                context, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384") == 1
        else { throw OpenSSLError.drain("setting groups and ciphers") }

        guard let leaf = identity.chain.first else { throw OpenSSLError(operation: "own SVID is empty", details: []) }
        guard let intermediates = OPENSSL_sk_new_null() else { throw OpenSSLError.drain("OPENSSL_sk_new_null") }
        defer { OPENSSL_sk_free(intermediates) }
        for certificate in identity.chain.dropFirst() {
            OPENSSL_sk_push(intermediates, UnsafeRawPointer(certificate.x509))
        }
        guard SSL_CTX_use_cert_and_key(context, leaf.x509, identity.key.pkey, intermediates, 1) == 1 else {
            throw OpenSSLError.drain("loading own SVID")
        }

        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        SSL_CTX_set_cert_verify_callback(context, spiffeVerifyCallback, verifierReference.toOpaque())
    }

    deinit {
        SSL_CTX_free(context)
        verifierReference.release()
    }

    /// Verifies the certificate chain an established session's peer presented against this
    /// context's trust bundles, as after a reload. Returns the refusal reason, or nil if still valid.
    public func reverifyPeer(of stream: TLSStream) -> (ReasonCode, String?)? {
        let check = PeerCheck()
        guard verifyPeer(of: stream, into: check) else { return (check.reason ?? .untrustedChain, check.detail) }
        return nil
    }

    /// Runs the full SVID verification on an established session's peer, filling `check`: after
    /// a reload, and for a resumed session, whose peer sent no certificate this time. Expiry is
    /// checked against the current time.
    @discardableResult
    public func verifyPeer(of stream: TLSStream, into check: PeerCheck) -> Bool {
        guard let leaf = SSL_get0_peer_certificate(stream.ssl) else {
            check.reason = .noClientCert
            return false
        }
        // On a server the peer chain excludes the leaf: exactly the untrusted intermediates. A
        // resumed session comes from the session cache, which kept the chain of its first handshake.
        let intermediates = SSL_get_peer_cert_chain(stream.ssl)
        return verifierReference.takeUnretainedValue().verify(leaf: leaf, untrusted: intermediates, into: check) == nil
    }

    /// How long a cached session may be resumed: short, since its peer is re-verified anyway.
    public static let sessionLifetimeSeconds = 3600
}

/// Replaces OpenSSL's chain building: the SVID picks its own trust domain's store.
private let spiffeVerifyCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = {
    storeContext, argument in
    guard let storeContext, let argument,
        let ssl = X509_STORE_CTX_get_ex_data(storeContext, SSL_get_ex_data_X509_STORE_CTX_idx()),
        let checkPointer = SSL_get_ex_data(OpaquePointer(ssl), peerCheckIndex),
        let leaf = X509_STORE_CTX_get0_cert(storeContext)
    else { return 0 }
    let verifier = Unmanaged<SVIDVerifier>.fromOpaque(argument).takeUnretainedValue()
    let check = Unmanaged<PeerCheck>.fromOpaque(checkPointer).takeUnretainedValue()
    let untrusted = X509_STORE_CTX_get0_untrusted(storeContext)
    if let error = verifier.verify(leaf: leaf, untrusted: untrusted, into: check) {
        X509_STORE_CTX_set_error(storeContext, error)
        return 0
    }
    // Remembered with the session before any ticket shares it (`SessionRecord`).
    if let id = check.id, let key = verifier.verificationKeys[id.trustDomain],
        let session = SSL_get_session(OpaquePointer(ssl))
    {
        SessionRecord(check: check, id: id, key: key).attach(to: session)
    }
    return 1
}
