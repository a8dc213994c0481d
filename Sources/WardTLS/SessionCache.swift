internal import COpenSSL
import Synchronization

/// TLS sessions shared by every worker's context, so a ticket resumes whichever worker accepts
/// the reconnection (with a cache per context, 1 in N with N workers).
///
/// One lock, taken once when a session is stored and once per resumption attempt, for a hash
/// lookup: a few hundred nanoseconds beside a handshake of hundreds of microseconds. OpenSSL's
/// own cache takes its context's lock on the same two paths. Oldest sessions are evicted first
/// past `capacity` sessions or `byteBudget` estimated bytes; OpenSSL drops expired ones as it
/// finds them (`sessionLifetimeSeconds`).
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

    private struct Entry {
        var session: Session
        var cost: Int
    }

    private struct State {
        var sessions: [Key: Entry] = [:]
        /// Insertion order, oldest first: a ring of `capacity` slots from `oldest`.
        var order: [Key?]
        var oldest = 0
        var queued = 0
        var bytes = 0
    }

    /// Sessions kept at most.
    let capacity: Int
    /// Estimated bytes kept at most: a session holds its peer's parsed certificate chain.
    let byteBudget: Int
    /// A session whose encoding (peer certificate included) is larger is not kept: peers with
    /// huge certificates do full handshakes rather than crowd out everyone else's sessions.
    static let maxSessionBytes = 8 * 1024
    private let state: Mutex<State>

    init(capacity: Int, byteBudget: Int = 64 << 20) {
        self.capacity = capacity
        self.byteBudget = byteBudget
        state = Mutex(State(order: Array(repeating: nil, count: capacity)))
    }

    var count: Int { state.withLock { $0.sessions.count } }
    var estimatedBytes: Int { state.withLock { $0.bytes } }

    /// Keeps `session` (taking over the caller's reference).
    func store(_ session: OpaquePointer) {
        var length: UInt32 = 0
        let encoded = Int(i2d_SSL_SESSION(session, nil))
        guard let key = Key(SSL_SESSION_get_id(session, &length), Int(length)), encoded > 0,
            encoded <= Self.maxSessionBytes
        else {
            SSL_SESSION_free(session)
            return
        }
        // Parsed certificates take several times their DER (measured: about 4x).
        let cost = encoded * 4 + 2048
        let evicted: [Session] = state.withLock { state in
            var evicted: [Session] = []
            if let old = state.sessions.removeValue(forKey: key) {
                evicted.append(old.session)
                state.bytes -= old.cost
            }
            // Oldest first, until there is room in slots and bytes.
            while state.queued > 0 && (state.queued == capacity || state.bytes + cost > byteBudget) {
                let slot = state.oldest
                state.oldest = (state.oldest + 1) % capacity
                state.queued -= 1
                guard let oldest = state.order[slot] else { continue }
                state.order[slot] = nil
                if let old = state.sessions.removeValue(forKey: oldest) {
                    evicted.append(old.session)
                    state.bytes -= old.cost
                }
            }
            state.sessions[key] = Entry(session: Session(pointer: session), cost: cost)
            state.order[(state.oldest + state.queued) % capacity] = key
            state.queued += 1
            state.bytes += cost
            return evicted
        }
        for session in evicted { SSL_SESSION_free(session.pointer) }
    }

    /// A new reference to the session named `id`, or nil.
    func find(_ id: UnsafePointer<UInt8>?, length: Int) -> OpaquePointer? {
        guard let key = Key(id, length) else { return nil }
        let found = state.withLock { state -> Session? in
            guard let entry = state.sessions[key] else { return nil }
            // Referenced under the lock: an eviction on another thread cannot free it first.
            SSL_SESSION_up_ref(entry.session.pointer)
            return entry.session
        }
        return found?.pointer
    }

    func remove(_ session: OpaquePointer) {
        var length: UInt32 = 0
        guard let key = Key(SSL_SESSION_get_id(session, &length), Int(length)) else { return }
        let removed = state.withLock { state -> Session? in
            guard let stored = state.sessions[key], stored.session.pointer == session else { return nil }
            state.sessions[key] = nil
            state.bytes -= stored.cost
            // Its slot in `order` stays until eviction reaches it; the key no longer resolves.
            return stored.session
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
