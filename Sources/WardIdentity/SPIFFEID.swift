/// A SPIFFE ID (`spiffe://trust-domain/path`), validated to the SPIFFE-ID standard on construction.
///
/// Parsing is byte-wise and allocates only the stored string; comparison is exact and
/// case-sensitive, as the standard requires (nothing is normalised).
public struct SPIFFEID: Hashable, Sendable, CustomStringConvertible {
    /// The SPIFFE standard caps a whole ID at 2048 bytes.
    public static let maximumLength = 2048
    static let scheme: [UInt8] = Array("spiffe://".utf8)

    /// The whole ID, exactly as parsed.
    public let description: String
    public let trustDomain: TrustDomain
    /// Offset of the path in `description`'s UTF-8 view; equals its length for a trust domain's own ID.
    public let pathOffset: Int

    /// The path (`/a/b`), or empty for the trust domain's own ID.
    public var path: Substring {
        let utf8 = description.utf8
        return Substring(utf8[utf8.index(utf8.startIndex, offsetBy: pathOffset)...])
    }

    /// The path's segments, in order.
    public var segments: [Substring] {
        path.split(separator: "/", omittingEmptySubsequences: true)
    }

    /// True for an ID that names a workload rather than the trust domain itself.
    public var hasPath: Bool { pathOffset < description.utf8.count }

    public init(parsing text: String) throws(SPIFFEIDError) {
        let bytes = text.utf8
        guard !bytes.isEmpty else { throw .empty }
        guard bytes.count <= Self.maximumLength else { throw .tooLong }
        guard bytes.starts(with: Self.scheme) else { throw .wrongScheme }

        var index = bytes.index(bytes.startIndex, offsetBy: Self.scheme.count)
        let domainStart = index
        while index != bytes.endIndex, bytes[index] != UInt8(ascii: "/") {
            guard TrustDomain.isAllowed(bytes[index]) else {
                throw .invalidTrustDomainCharacter(Self.character(in: text, at: index))
            }
            index = bytes.index(after: index)
        }
        let domainLength = bytes.distance(from: domainStart, to: index)
        guard domainLength > 0 else { throw .emptyTrustDomain }
        guard domainLength <= TrustDomain.maximumLength else { throw .trustDomainTooLong }

        let pathOffset = bytes.distance(from: bytes.startIndex, to: index)
        try Self.validatePath(bytes[index...], of: text)

        self.description = text
        self.trustDomain = TrustDomain(unchecked: String(Substring(bytes[domainStart..<index])))
        self.pathOffset = pathOffset
    }

    /// The whole character starting at `index`: the byte alone would print `é` as `Ã`. Every
    /// byte before `index` was ASCII, so it starts a scalar.
    static func character(in text: String, at index: String.Index) -> Character {
        Character(text.unicodeScalars[index])
    }

    private static func validatePath(_ path: Substring.UTF8View, of text: String) throws(SPIFFEIDError) {
        guard !path.isEmpty else { return }
        var segmentLength = 0
        var dots = 0
        // The path starts with "/"; each later "/" closes the segment before it.
        for index in path.indices.dropFirst() {
            let byte = path[index]
            if byte == UInt8(ascii: "/") {
                try checkSegment(length: segmentLength, dots: dots)
                segmentLength = 0
                dots = 0
                continue
            }
            guard isAllowedInPath(byte) else {
                throw .invalidPathCharacter(character(in: text, at: index))
            }
            segmentLength += 1
            if byte == UInt8(ascii: ".") { dots += 1 }
        }
        if segmentLength == 0 { throw .trailingSlash }
        try checkSegment(length: segmentLength, dots: dots)
    }

    private static func checkSegment(length: Int, dots: Int) throws(SPIFFEIDError) {
        if length == 0 { throw .emptySegment }
        if dots == length && length <= 2 { throw .dotSegment }
    }

    static func isAllowedInPath(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"),
            UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}

/// Why a string is not a SPIFFE ID; the description is the operator-facing text.
public enum SPIFFEIDError: Error, Equatable, Sendable, CustomStringConvertible {
    case empty
    case tooLong
    case wrongScheme
    case emptyTrustDomain
    case trustDomainTooLong
    case invalidTrustDomainCharacter(Character)
    case invalidPathCharacter(Character)
    case emptySegment
    case dotSegment
    case trailingSlash

    public var description: String {
        switch self {
        case .empty: return "empty SPIFFE ID"
        case .tooLong: return "SPIFFE ID longer than \(SPIFFEID.maximumLength) bytes"
        case .wrongScheme: return "SPIFFE ID must start with \"spiffe://\""
        case .emptyTrustDomain: return "SPIFFE ID has an empty trust domain"
        case .trustDomainTooLong: return "trust domain longer than \(TrustDomain.maximumLength) bytes"
        case .invalidTrustDomainCharacter(let c):
            return "trust domain may hold only a-z 0-9 . - _ (found \(c.debugDescription))"
        case .invalidPathCharacter(let c):
            return "path segment may hold only a-z A-Z 0-9 . - _ (found \(c.debugDescription))"
        case .emptySegment: return "path has an empty segment"
        case .dotSegment: return "path segment may not be \".\" or \"..\""
        case .trailingSlash: return "path may not end with \"/\""
        }
    }
}

extension SPIFFEID {
    // The trust domain and path offset derive from the text, so the text alone decides equality.
    public static func == (lhs: SPIFFEID, rhs: SPIFFEID) -> Bool { lhs.description == rhs.description }
    public func hash(into hasher: inout Hasher) { hasher.combine(description) }
}

extension SPIFFEID {
    /// Calls `body` with each path segment in order, without allocating; stops when it returns false.
    @inlinable
    public func forEachSegment(_ body: (Substring) -> Bool) {
        let utf8 = description.utf8
        var start = utf8.index(utf8.startIndex, offsetBy: pathOffset)
        guard start != utf8.endIndex else { return }
        start = utf8.index(after: start)
        var cursor = start
        while cursor != utf8.endIndex {
            if utf8[cursor] == UInt8(ascii: "/") {
                if !body(Substring(utf8[start..<cursor])) { return }
                start = utf8.index(after: cursor)
            }
            cursor = utf8.index(after: cursor)
        }
        _ = body(Substring(utf8[start..<cursor]))
    }
}
