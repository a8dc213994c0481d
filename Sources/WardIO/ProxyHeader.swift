/// A PROXY protocol v2 header (HAProxy's PROXY protocol specification, section 2.2): the
/// upstream learns the client's address, the TLS parameters and the client's SPIFFE ID without
/// parsing a certificate.
///
/// Layout: the 12-byte signature, version and command (0x21: v2, PROXY), family and transport
/// (0x11 TCP/IPv4, 0x21 TCP/IPv6), the length of what follows (big-endian), the source and
/// destination addresses and ports, then TLVs: `PP2_TYPE_SSL` (0x20) with the client flags
/// SSL and CERT_CONN, verify 0 (verified) and the sub-TLVs version (0x21) and cipher (0x23);
/// and 0xE0, a custom TLV, the peer's SPIFFE ID in UTF-8.
public struct ProxyHeader: Sendable {
    public enum Address: Sendable, Equatable {
        /// Four address bytes and a port.
        case ipv4([UInt8], port: UInt16)
        /// Sixteen address bytes and a port.
        case ipv6([UInt8], port: UInt16)
    }

    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    public static let typeSSL: UInt8 = 0x20
    public static let subtypeSSLVersion: UInt8 = 0x21
    public static let subtypeSSLCipher: UInt8 = 0x23
    public static let typeSPIFFEID: UInt8 = 0xE0
    /// PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN: TLS, with a client certificate on this connection.
    static let clientFlags: UInt8 = 0x01 | 0x02

    public var source: Address
    public var destination: Address
    public var tlsVersion: String?
    public var cipher: String?
    public var spiffeID: String?

    public init(source: Address, destination: Address, tlsVersion: String?, cipher: String?, spiffeID: String?) {
        self.source = source
        self.destination = destination
        self.tlsVersion = tlsVersion
        self.cipher = cipher
        self.spiffeID = spiffeID
    }

    /// The header's bytes. Nil if the two addresses are of different families (the header has
    /// one family for both) or a TLV would not fit its 16-bit length.
    public func encoded() -> [UInt8]? {
        var addresses: [UInt8] = []
        let family: UInt8
        switch (source, destination) {
        case (.ipv4(let from, let fromPort), .ipv4(let to, let toPort)) where from.count == 4 && to.count == 4:
            family = 0x11
            addresses = from + to + Self.bigEndian(fromPort) + Self.bigEndian(toPort)
        case (.ipv6(let from, let fromPort), .ipv6(let to, let toPort)) where from.count == 16 && to.count == 16:
            family = 0x21
            addresses = from + to + Self.bigEndian(fromPort) + Self.bigEndian(toPort)
        default:
            return nil
        }
        var ssl: [UInt8] = [Self.clientFlags, 0, 0, 0, 0]
        if let tlsVersion { ssl += Self.tlv(Self.subtypeSSLVersion, Array(tlsVersion.utf8)) }
        if let cipher { ssl += Self.tlv(Self.subtypeSSLCipher, Array(cipher.utf8)) }
        var tlvs = Self.tlv(Self.typeSSL, ssl)
        if let spiffeID { tlvs += Self.tlv(Self.typeSPIFFEID, Array(spiffeID.utf8)) }
        let length = addresses.count + tlvs.count
        guard length <= Int(UInt16.max), ssl.count <= Int(UInt16.max) else { return nil }
        return Self.signature + [0x21, family] + Self.bigEndian(UInt16(length)) + addresses + tlvs
    }

    private static func tlv(_ type: UInt8, _ value: [UInt8]) -> [UInt8] {
        [type] + bigEndian(UInt16(truncatingIfNeeded: value.count)) + value
    }

    private static func bigEndian(_ value: UInt16) -> [UInt8] {
        [UInt8(value >> 8), UInt8(value & 0xFF)]
    }
}
