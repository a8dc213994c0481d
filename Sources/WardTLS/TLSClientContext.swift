internal import COpenSSL
internal import CWardShims
import WardIdentity

/// The calling side (outbound entries): presents Ward's SVID, verifies the server's with the
/// same SPIFFE rules as a client's (serverAuth instead of clientAuth), and keeps the TLS 1.3
/// tickets servers issue to resume with them.
///
/// Sessions live in per-entry pools of this context, and a context lives for one generation
/// of one worker: a publication (new own SVID, bundles, rules or `server_id`) starts with no
/// sessions, so none is resumed across a change of either side's trust.
public final class TLSClientContext: TLSContext {
    private let pools: [ClientSessionPool]

    /// `entries`: how many outbound entries; each has its own pool of sessions.
    public init(
        identity: IdentityMaterial, verifier: SVIDVerifier, serverPolicy: SVIDLeafPolicy, entries: Int,
        maxCertSize: Int = 32 * 1024
    ) throws {
        pools = (0..<entries).map { _ in ClientSessionPool() }
        try super.init(
            method: TLS_client_method(), identity: identity, verifier: verifier, peerPolicy: serverPolicy,
            maxCertSize: maxCertSize, extraOptions: 0)
        // Tickets arrive after the handshake; the callback files them in the entry's pool.
        _ = WardShim_SSL_CTX_set_session_cache_mode(
            context, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
        SSL_CTX_sess_set_new_cb(context, clientSessionCallback)
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
    }

    /// Before the ClientHello: SNI if the entry names a server, and a kept session to resume.
    func prepare(_ ssl: OpaquePointer, serverName: String?, entry: Int) {
        if let serverName {
            _ = serverName.withCString { name in
                SSL_ctrl(
                    ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name),
                    UnsafeMutableRawPointer(mutating: name))
            }
        }
        guard pools.indices.contains(entry) else { return }
        let pool = pools[entry]
        SSL_set_ex_data(ssl, clientPoolIndex, Unmanaged.passUnretained(pool).toOpaque())
        if let session = pool.take() {
            SSL_set_session(ssl, session)  // takes a reference of its own
            SSL_SESSION_free(session)
        }
    }
}

/// Tickets one outbound entry's server issued, newest last. A TLS 1.3 ticket is used once (a
/// Ward server removes the session it resumes), and each connection brings a new one, so the
/// pool holds about as many as connections run at once, up to `capacity`.
final class ClientSessionPool {
    static let capacity = 64
    private var sessions: [OpaquePointer] = []

    /// Keeps `session`, taking over the caller's reference.
    func put(_ session: OpaquePointer) {
        guard SSL_SESSION_is_resumable(session) == 1 else {
            SSL_SESSION_free(session)
            return
        }
        if sessions.count == Self.capacity { SSL_SESSION_free(sessions.removeFirst()) }
        sessions.append(session)
    }

    /// The newest session (the caller owns the reference), or nil.
    func take() -> OpaquePointer? { sessions.popLast() }

    deinit { for session in sessions { SSL_SESSION_free(session) } }
}

/// The SSL ex_data slot pointing at the pool of the stream's entry (unretained: the stream
/// keeps its context, which keeps the pools).
let clientPoolIndex: Int32 = WardShim_SSL_get_ex_new_index()

private let clientSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
    guard let ssl, let session, let pointer = SSL_get_ex_data(ssl, clientPoolIndex) else { return 0 }
    Unmanaged<ClientSessionPool>.fromOpaque(pointer).takeUnretainedValue().put(session)
    return 1  // the pool keeps the reference OpenSSL handed over
}
