internal import COpenSSL
import WardIdentity

/// What verifying a peer's chain established, kept with its TLS session: a resumption under the
/// same verification key (the trust domain's bundle and Ward's limits) before `validUntil` needs
/// no second chain verification, which is most of a resumed handshake's cost.
///
/// Attached in the verify callback, before the session is issued as a ticket and shared with
/// other workers; immutable afterwards, so any worker may read it.
public final class SessionRecord: Sendable {
    public let id: SPIFFEID
    /// The verification key of the peer's trust domain when the chain was verified.
    public let key: String
    public let serialHex: String?
    public let sha256Hex: String?
    public let notAfter: Int64?
    public let validUntil: Int64?
    public let lifetimeSeconds: Int64

    init(check: PeerCheck, id: SPIFFEID, key: String) {
        self.id = id
        self.key = key
        serialHex = check.serialHex
        sha256Hex = check.sha256Hex
        notAfter = check.notAfter
        validUntil = check.validUntil
        lifetimeSeconds = check.lifetimeSeconds
    }

    /// Fills `check` as verification would have, if the record still holds at `now` under
    /// `currentKey`. False when the chain must be verified again.
    public func restore(into check: PeerCheck, currentKey: String?, now: Int64) -> Bool {
        guard let currentKey, currentKey == key, let until = validUntil ?? notAfter, now < until else { return false }
        check.id = id
        check.serialHex = serialHex
        check.sha256Hex = sha256Hex
        check.notAfter = notAfter
        check.validUntil = validUntil
        check.lifetimeSeconds = lifetimeSeconds
        return true
    }

    /// Keeps `self` with `session` (one reference, released when OpenSSL frees the session).
    func attach(to session: OpaquePointer) {
        guard sessionRecordIndex >= 0 else { return }
        let previous = SSL_SESSION_get_ex_data(session, sessionRecordIndex)
        guard SSL_SESSION_set_ex_data(session, sessionRecordIndex, Unmanaged.passRetained(self).toOpaque()) == 1
        else {
            Unmanaged.passUnretained(self).release()
            return
        }
        if let previous { Unmanaged<SessionRecord>.fromOpaque(previous).release() }
    }

    static func attached(to session: OpaquePointer) -> SessionRecord? {
        guard sessionRecordIndex >= 0, let pointer = SSL_SESSION_get_ex_data(session, sessionRecordIndex) else {
            return nil
        }
        return Unmanaged<SessionRecord>.fromOpaque(pointer).takeUnretainedValue()
    }
}

/// The SSL_SESSION ex_data slot for `SessionRecord`s. A duplicated session (OpenSSL copies one
/// per TLS 1.3 ticket) takes a reference of its own; freeing a session releases its reference.
let sessionRecordIndex: Int32 = CRYPTO_get_ex_new_index(
    CRYPTO_EX_INDEX_SSL_SESSION, 0, nil, nil, sessionRecordDuplicate, sessionRecordFree)

private let sessionRecordDuplicate:
    @convention(c) (
        UnsafeMutablePointer<CRYPTO_EX_DATA>?, UnsafePointer<CRYPTO_EX_DATA>?,
        UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32, Int, UnsafeMutableRawPointer?
    ) -> Int32 = { _, _, pointer, _, _, _ in
        if let record = pointer?.pointee { _ = Unmanaged<SessionRecord>.fromOpaque(record).retain() }
        return 1
    }

private let sessionRecordFree:
    @convention(c) (
        UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<CRYPTO_EX_DATA>?, Int32, Int,
        UnsafeMutableRawPointer?
    ) -> Void = { _, record, _, _, _, _ in
        if let record { Unmanaged<SessionRecord>.fromOpaque(record).release() }
    }
