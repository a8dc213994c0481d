internal import COpenSSL
import Synchronization

/// TLS sessions shared by every worker's context, so a ticket resumes whichever worker accepts
/// the reconnection (with a cache per context, 1 in N with N workers).
///
/// One lock, taken once when a session is stored and once per resumption attempt, for a hash
/// lookup: a few hundred nanoseconds beside a handshake of hundreds of microseconds. OpenSSL's
/// own cache takes its context's lock on the same two paths. Oldest sessions are evicted first
/// past `capacity`; OpenSSL drops expired ones as it finds them (`sessionLifetimeSeconds`).
final class SessionCache: @unchecked Sendable {
    // @unchecked: the SSL_SESSION pointers are reference-counted by OpenSSL (atomically) and
    // only touched under `state`'s lock here.
    static let shared = SessionCache(capacity: 20_480)

    struct Key: Hashable {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var length = 0

        init?(_ bytes: UnsafePointer<UInt8>?, _ length: Int) {
            guard let bytes, length > 0, length <= 32 else { return nil }
            self.length = length
            withUnsafeMutableBytes(of: &words) { raw in
                raw.copyMemory(from: UnsafeRawBufferPointer(start: bytes, count: length))
            }
        }

        static func == (lhs: Key, rhs: Key) -> Bool {
            lhs.length == rhs.length && lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1
                && lhs.words.2 == rhs.words.2 && lhs.words.3 == rhs.words.3
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(words.0)
            hasher.combine(words.1)
            hasher.combine(words.2)
            hasher.combine(words.3)
        }
    }

    /// An SSL_SESSION reference held by the cache.
    private struct Session: @unchecked Sendable {
        // @unchecked: OpenSSL counts its references atomically; the cache frees each once.
        let pointer: OpaquePointer
    }

    private struct State {
        var sessions: [Key: Session] = [:]
        /// Insertion order, for evicting the oldest: a ring of `capacity` slots.
        var order: [Key?]
        var next = 0
    }

    let capacity: Int
    private let state: Mutex<State>

    init(capacity: Int) {
        self.capacity = capacity
        state = Mutex(State(order: Array(repeating: nil, count: capacity)))
    }

    var count: Int { state.withLock { $0.sessions.count } }

    /// Keeps `session` (taking over the caller's reference).
    func store(_ session: OpaquePointer) {
        var length: UInt32 = 0
        guard let key = Key(SSL_SESSION_get_id(session, &length), Int(length)) else {
            SSL_SESSION_free(session)
            return
        }
        let evicted: [Session] = state.withLock { state in
            var evicted: [Session] = []
            if let old = state.sessions.updateValue(Session(pointer: session), forKey: key) { evicted.append(old) }
            if let oldest = state.order[state.next], oldest != key, let old = state.sessions.removeValue(forKey: oldest)
            {
                evicted.append(old)
            }
            state.order[state.next] = key
            state.next = (state.next + 1) % capacity
            return evicted
        }
        for session in evicted { SSL_SESSION_free(session.pointer) }
    }

    /// A new reference to the session named `id`, or nil.
    func find(_ id: UnsafePointer<UInt8>?, length: Int) -> OpaquePointer? {
        guard let key = Key(id, length) else { return nil }
        let found = state.withLock { state -> Session? in
            guard let session = state.sessions[key] else { return nil }
            // Referenced under the lock: an eviction on another thread cannot free it first.
            SSL_SESSION_up_ref(session.pointer)
            return session
        }
        return found?.pointer
    }

    func remove(_ session: OpaquePointer) {
        var length: UInt32 = 0
        guard let key = Key(SSL_SESSION_get_id(session, &length), Int(length)) else { return }
        let removed = state.withLock { state -> Session? in
            guard let stored = state.sessions[key], stored.pointer == session else { return nil }
            return state.sessions.removeValue(forKey: key)
        }
        if let removed { SSL_SESSION_free(removed.pointer) }
    }

    /// Wires a server context to this cache instead of its own.
    func attach(to context: OpaquePointer) {
        SSL_CTX_sess_set_new_cb(context, newSessionCallback)
        SSL_CTX_sess_set_get_cb(context, getSessionCallback)
        SSL_CTX_sess_set_remove_cb(context, removeSessionCallback)
    }
}

private let newSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { _, session in
    guard let session else { return 0 }
    SessionCache.shared.store(session)
    return 1  // the cache keeps the reference OpenSSL handed over
}

private let getSessionCallback:
    @convention(c) (OpaquePointer?, UnsafePointer<UInt8>?, Int32, UnsafeMutablePointer<Int32>?) -> OpaquePointer? = {
        _, id, length, copy in
        copy?.pointee = 0  // the returned session carries a reference of its own
        return SessionCache.shared.find(id, length: Int(length))
    }

private let removeSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Void = { _, session in
    guard let session else { return }
    SessionCache.shared.remove(session)
}
