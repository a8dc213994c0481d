import WardIdentity

/// What SVID verification learnt about one peer during its handshake. The connection owns it;
/// the TLS verify callback fills it in through the `SSL`'s ex_data slot.
public final class PeerCheck {
    public var id: SPIFFEID?
    /// Set when the peer was refused.
    public var reason: ReasonCode?
    /// OpenSSL's or Ward's detail text for a refusal, for operators.
    public var detail: String?
    public var serialHex: String?
    public var sha256Hex: String?
    public var notAfter: Int64?
    /// The earliest notAfter of the verified chain, leaf to trust anchor: when the peer's
    /// authentication ends, which may be before its leaf expires.
    public var validUntil: Int64?
    /// notAfter − notBefore of the leaf, in seconds.
    public var lifetimeSeconds: Int64 = 0
    /// Set on the client side: the server's ID must meet it, or the handshake fails with
    /// `unexpected_server_id`. Held strongly: a reload mid-handshake must not drop it.
    public var requirement: (any PeerIDRequirement)?

    public init() {}
}

/// Which SPIFFE IDs a server may have (an outbound entry's `server_id`), checked while the
/// handshake runs: an unexpected server never sees Ward's certificate (TLS 1.3) or any byte.
public protocol PeerIDRequirement: AnyObject {
    func admits(_ id: SPIFFEID) -> Bool
    /// For the refusal's detail: what was expected.
    var expectation: String { get }
}
