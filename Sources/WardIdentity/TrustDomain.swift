/// A SPIFFE trust domain name such as `example.org`.
public struct TrustDomain: Hashable, Sendable, CustomStringConvertible, Comparable {
    public static let maximumLength = 255
    public let name: String
    public var description: String { name }

    init(unchecked name: String) { self.name = name }

    /// Parses a bare trust domain name (as written in config keys) or throws why it is invalid.
    public init(parsing name: String) throws(SPIFFEIDError) {
        guard !name.utf8.isEmpty else { throw .emptyTrustDomain }
        guard name.utf8.count <= Self.maximumLength else { throw .trustDomainTooLong }
        for index in name.utf8.indices where !Self.isAllowed(name.utf8[index]) {
            throw .invalidTrustDomainCharacter(SPIFFEID.character(in: name, at: index))
        }
        self.name = name
    }

    static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    public static func < (lhs: TrustDomain, rhs: TrustDomain) -> Bool { lhs.name < rhs.name }
}
