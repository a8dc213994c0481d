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

    /// `ticketKeys` (80 bytes: name, HMAC and AES keys) turns on TLS 1.3 resumption with
    /// stateless tickets; every worker gets the same keys so any worker can resume any ticket.
    public init(identity: IdentityMaterial, verifier: SVIDVerifier, ticketKeys: [UInt8]? = nil) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw OpenSSLError.drain("SSL_CTX_new") }
        self.context = context
        self.verifierReference = Unmanaged.passRetained(verifier)

        guard WardShim_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1,
            WardShim_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1
        else { throw OpenSSLError.drain("setting TLS versions") }
        SSL_CTX_set_options(
            context,
            WardShim_SSL_OP_NO_RENEGOTIATION() | WardShim_SSL_OP_NO_COMPRESSION()
                | WardShim_SSL_OP_CIPHER_SERVER_PREFERENCE() | (ticketKeys == nil ? WardShim_SSL_OP_NO_TICKET() : 0)
                // A peer that closes TCP without close_notify ends its stream like a FIN would:
                // the proxied byte stream has no truncation signal of its own to protect.
                | WardShim_SSL_OP_IGNORE_UNEXPECTED_EOF())
        // Idle connections give their 34 KiB of record buffers back.
        _ = WardShim_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
        // Tickets only when resumption is on: unused ones cost about 30% of a handshake (PLATFORM.md).
        _ = WardShim_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_OFF))
        _ = SSL_CTX_set_num_tickets(context, ticketKeys == nil ? 0 : 1)
        // Sessions made with client verification may only resume in the same context id.
        let sessionContext = Array("ward".utf8)
        guard SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count)) == 1 else {
            throw OpenSSLError.drain("setting the session id context")
        }
        if var keys = ticketKeys {
            guard keys.count == 80, WardShim_SSL_CTX_set_tlsext_ticket_keys(context, &keys, 80) == 1,
                SSL_CTX_set_session_ticket_cb(context, ticketGenerateCallback, ticketDecryptCallback, nil) == 1
            else { throw OpenSSLError.drain("setting session ticket keys") }
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
    public func reverifyPeer(of session: OpaquePointer) -> (ReasonCode, String?)? {
        let check = PeerCheck()
        guard verifyPeer(of: session, into: check) else { return (check.reason ?? .untrustedChain, check.detail) }
        return nil
    }

    /// Runs the full SVID verification on an established session's peer, filling `check`: after
    /// a reload, and for a resumed session, whose peer sent no certificate this time. Expiry is
    /// checked against the current time.
    @discardableResult
    public func verifyPeer(of session: OpaquePointer, into check: PeerCheck) -> Bool {
        guard let leaf = SSL_get0_peer_certificate(session) else {
            check.reason = .noClientCert
            return false
        }
        // On a server the peer chain excludes the leaf: exactly the untrusted intermediates. A
        // resumed session has none; its ticket carries the intermediates of the first handshake.
        if let intermediates = SSL_get_peer_cert_chain(session) {
            return verifierReference.takeUnretainedValue().verify(leaf: leaf, untrusted: intermediates, into: check)
                == nil
        }
        let stored = ticketIntermediates(SSL_get_session(session))
        guard let stack = OPENSSL_sk_new_null() else { return false }
        defer { OPENSSL_sk_free(stack) }
        for certificate in stored { OPENSSL_sk_push(stack, UnsafeRawPointer(certificate.x509)) }
        return verifierReference.takeUnretainedValue().verify(leaf: leaf, untrusted: stack, into: check) == nil
    }

    /// Replaces the ticket keys (rotation). Only on the thread that uses this context.
    public func setTicketKeys(_ keys: [UInt8]) {
        var keys = keys
        _ = WardShim_SSL_CTX_set_tlsext_ticket_keys(context, &keys, 80)
    }

    /// 80 fresh random bytes for `ticketKeys`.
    public static func generateTicketKeys() -> [UInt8] {
        var keys = [UInt8](repeating: 0, count: 80)
        _ = RAND_bytes(&keys, 80)
        return keys
    }

    /// Whether the handshake resumed a session (no certificate was sent this time).
    public static func isResumed(_ session: OpaquePointer) -> Bool { SSL_session_reused(session) == 1 }

    /// A new `SSL` for one accepted connection, wired to `check`.
    public func makeSession(check: PeerCheck) -> OpaquePointer? {
        guard let ssl = SSL_new(context) else { return nil }
        SSL_set_ex_data(ssl, peerCheckIndex, Unmanaged.passUnretained(check).toOpaque())
        return ssl
    }
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
    return 1
}

/// Stores the peer's intermediates in the ticket (length-prefixed DER), so that a resumed
/// session can be verified against the trust bundles again. Nothing secret goes in: the ticket is
/// encrypted with the ticket keys anyway.
private let ticketGenerateCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _ in
    guard let ssl, let session = SSL_get_session(ssl) else { return 1 }
    // A renewed ticket of a resumed session already carries the data.
    guard let chain = SSL_get_peer_cert_chain(ssl) else { return 1 }
    var data: [UInt8] = []
    for index in 0..<OPENSSL_sk_num(chain) {
        guard let certificate = OPENSSL_sk_value(chain, index) else { continue }
        var der: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(OpaquePointer(certificate), &der)
        guard length > 0, let der else { continue }
        defer { WardShim_OPENSSL_free(der) }
        withUnsafeBytes(of: UInt32(length).bigEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: UnsafeBufferPointer(start: der, count: Int(length)))
    }
    return SSL_SESSION_set1_ticket_appdata(session, data, data.count)
}

/// Uses any ticket that decrypted; anything else falls back to a full handshake.
private let ticketDecryptCallback:
    @convention(c) (
        OpaquePointer?, OpaquePointer?, UnsafePointer<UInt8>?, Int, Int32, UnsafeMutableRawPointer?
    ) -> Int32 = { _, _, _, _, status, _ in
        switch status {
        case SSL_TICKET_SUCCESS: return SSL_TICKET_RETURN_USE
        case SSL_TICKET_SUCCESS_RENEW: return SSL_TICKET_RETURN_USE_RENEW
        default: return SSL_TICKET_RETURN_IGNORE_RENEW
        }
    }

/// The intermediates a ticket carries, decoded.
func ticketIntermediates(_ session: OpaquePointer?) -> [Certificate] {
    guard let session else { return [] }
    var raw: UnsafeMutableRawPointer?
    var length = 0
    guard SSL_SESSION_get0_ticket_appdata(session, &raw, &length) == 1, let raw, length > 0 else { return [] }
    let bytes = UnsafeRawBufferPointer(start: raw, count: length)
    var certificates: [Certificate] = []
    var offset = 0
    while offset + 4 <= bytes.count {
        let size = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        offset += 4
        guard offset + size <= bytes.count else { break }
        var cursor: UnsafePointer<UInt8>? = bytes.baseAddress!.advanced(by: offset).assumingMemoryBound(to: UInt8.self)
        if let x509 = d2i_X509(nil, &cursor, size) { certificates.append(Certificate(owning: x509)) }
        offset += size
    }
    return certificates
}
