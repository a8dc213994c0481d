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

/// What the verify callback needs: the verifier of this context's generation, and the leaf
/// rules of the peer's role (a client's SVID needs clientAuth if it has an EKU, a server's
/// serverAuth).
final class Verification {
    let verifier: SVIDVerifier
    let policy: SVIDLeafPolicy

    init(verifier: SVIDVerifier, policy: SVIDLeafPolicy) {
        self.verifier = verifier
        self.policy = policy
    }
}

/// An `SSL_CTX` for mutual TLS with SPIFFE peers, in one role: `TLSServerContext` accepts,
/// `TLSClientContext` calls out. Both present Ward's SVID and verify the peer's the same way.
///
/// Building one parses keys and fetches algorithms: do not build on an event loop. Each worker
/// builds its own so handshakes never share a context's locks across threads.
public class TLSContext {
    let context: OpaquePointer
    /// Retained for the callback's `arg`; released in deinit, the one release point.
    private let verification: Unmanaged<Verification>

    init(
        method: OpaquePointer?, identity: IdentityMaterial, verifier: SVIDVerifier, peerPolicy: SVIDLeafPolicy,
        maxCertSize: Int, extraOptions: UInt64
    ) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(method) else { throw OpenSSLError.drain("SSL_CTX_new") }
        self.context = context
        self.verification = Unmanaged.passRetained(Verification(verifier: verifier, policy: peerPolicy))

        guard WardShim_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1,
            WardShim_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1
        else { throw OpenSSLError.drain("setting TLS versions") }
        // Handshake signatures and groups follow the same level as peers' chains.
        SSL_CTX_set_security_level(context, verifier.securityLevel)
        SSL_CTX_set_options(
            context,
            WardShim_SSL_OP_NO_RENEGOTIATION() | WardShim_SSL_OP_NO_COMPRESSION()
                // A peer that closes TCP without close_notify ends its stream like a FIN would:
                // the proxied byte stream has no truncation signal of its own to protect.
                | WardShim_SSL_OP_IGNORE_UNEXPECTED_EOF() | extraOptions)
        // A certificate message larger than this ends the handshake before it is parsed.
        WardShim_SSL_CTX_set_max_cert_list(context, maxCertSize)
        // Idle connections give their 34 KiB of record buffers back.
        _ = WardShim_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
        // An SSL_read that handled a post-handshake message (KeyUpdate, ticket) returns once the
        // read-ahead buffer is empty instead of reading on: a peer sending nothing else holds
        // the loop for one buffer at a time, not for as long as it keeps sending.
        _ = SSL_CTX_ctrl(context, SSL_CTRL_CLEAR_MODE, Int(SSL_MODE_AUTO_RETRY), nil)
        // Counts the peer's post-handshake messages (`TLSStream.maxLateMessages`).
        SSL_CTX_set_msg_callback(context, tlsMessageCallback)
        // With read-ahead (set per stream), one recv may bring this much: several records.
        SSL_CTX_set_default_read_buffer_len(context, TLSStream.readBufferSize)
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
        SSL_CTX_set_cert_verify_callback(context, spiffeVerifyCallback, verification.toOpaque())
    }

    deinit {
        SSL_CTX_free(context)
        verification.release()
    }

    /// Verifies the certificate chain an established session's peer presented against this
    /// context's trust bundles, as after a reload. Returns the refusal reason, or nil if still valid.
    public func reverifyPeer(of stream: TLSStream) -> (ReasonCode, String?)? {
        // The chain only: the caller decides on the ID against today's rules or `server_id`.
        let check = PeerCheck()
        guard verifyPeer(of: stream, into: check) else { return (check.reason ?? .untrustedChain, check.detail) }
        return nil
    }

    /// Runs the full SVID verification on an established session's peer, filling `check`: after
    /// a reload, and for a resumed session, whose peer sent no certificate this time. Expiry is
    /// checked against the current time; a server's ID against `check.requirement`.
    @discardableResult
    public func verifyPeer(of stream: TLSStream, into check: PeerCheck) -> Bool {
        guard let leaf = SSL_get0_peer_certificate(stream.ssl) else {
            check.reason = .noClientCert
            return false
        }
        // The untrusted intermediates: a server's peer chain excludes the leaf, a client's holds
        // it too, which verification tolerates. A resumed session kept the chain of its first
        // handshake.
        let intermediates = SSL_get_peer_cert_chain(stream.ssl)
        let verification = verification.takeUnretainedValue()
        guard
            verification.verifier.verify(leaf: leaf, untrusted: intermediates, into: check, policy: verification.policy)
                == nil
        else { return false }
        return Self.meetsRequirement(check)
    }

    /// A verified ID that an outbound entry does not expect is refused like a bad chain.
    static func meetsRequirement(_ check: PeerCheck) -> Bool {
        guard let requirement = check.requirement, let id = check.id, !requirement.admits(id) else { return true }
        check.reason = .unexpectedServerID
        check.detail = "server ID \(id) is not in server_id (\(requirement.expectation))"
        return false
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
    let verification = Unmanaged<Verification>.fromOpaque(argument).takeUnretainedValue()
    let verifier = verification.verifier
    let check = Unmanaged<PeerCheck>.fromOpaque(checkPointer).takeUnretainedValue()
    let untrusted = X509_STORE_CTX_get0_untrusted(storeContext)
    if let error = verifier.verify(leaf: leaf, untrusted: untrusted, into: check, policy: verification.policy) {
        X509_STORE_CTX_set_error(storeContext, error)
        return 0
    }
    guard TLSContext.meetsRequirement(check) else {
        X509_STORE_CTX_set_error(storeContext, X509_V_ERR_APPLICATION_VERIFICATION)
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
