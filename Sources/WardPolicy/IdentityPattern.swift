import WardIdentity

/// A `from` entry: an exact SPIFFE ID, or one with whole-segment wildcards.
///
/// Grammar (docs/rules.md): `spiffe://TRUST-DOMAIN/SEG/SEG...` where each SEG is a SPIFFE path
/// segment, `*` (exactly one segment), or, as the last segment only, `**` (one or more
/// segments). The trust domain is always literal: federation stays explicit.
public struct IdentityPattern: Hashable, Sendable, CustomStringConvertible {
    public enum Segment: Hashable, Sendable {
        case literal(Substring)
        case one
    }

    public let description: String
    public let trustDomain: TrustDomain
    /// Every segment but a trailing `**`.
    public let segments: [Segment]
    /// True when the pattern ends in `**`.
    public let matchesDescendants: Bool

    /// True when the pattern has no wildcard and so names exactly one ID.
    public var isExact: Bool { !matchesDescendants && !segments.contains(.one) }

    public init(parsing text: String) throws(IdentityPatternError) {
        // Swap wildcards for a valid placeholder so the SPIFFE ID rules check everything else.
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0] == "spiffe:", parts[1].isEmpty else {
            throw .invalidID(.wrongScheme)
        }
        var segments: [Segment] = []
        var descendants = false
        var checked = "spiffe://" + parts[2]
        for (offset, part) in parts.dropFirst(3).enumerated() {
            let isLast = offset == parts.count - 4
            switch part {
            case "**":
                guard isLast else { throw .doubleStarNotLast }
                descendants = true
                checked += "/x"
            case "*":
                segments.append(.one)
                checked += "/x"
            default:
                if part.contains("*") { throw .partialWildcard(String(part)) }
                segments.append(.literal(part))
                checked += "/" + part
            }
        }
        let id: SPIFFEID
        do {
            id = try SPIFFEID(parsing: checked)
        } catch {
            throw .invalidID(error)
        }
        guard id.hasPath else { throw .noPath }
        self.description = text
        self.trustDomain = id.trustDomain
        self.segments = segments
        self.matchesDescendants = descendants
    }

    /// Whether `id` is matched. Allocation-free: walks the ID's UTF-8 in place.
    public func matches(_ id: SPIFFEID) -> Bool {
        guard id.trustDomain == trustDomain else { return false }
        var index = 0
        var result = true
        id.forEachSegment { segment in
            if index < segments.count {
                if case .literal(let literal) = segments[index], literal != segment { result = false }
            } else if !matchesDescendants {
                result = false
            }
            index += 1
            return result
        }
        return result && (matchesDescendants ? index > segments.count : index == segments.count)
    }

    /// True when every ID this pattern matches is also matched by `other`'s wider net, i.e.
    /// `other` covers `self`. Used by `ward check` to find rules that can never decide.
    public func isCovered(by other: IdentityPattern) -> Bool {
        guard trustDomain == other.trustDomain else { return false }
        for (index, mine) in segments.enumerated() {
            guard index < other.segments.count else {
                return other.matchesDescendants
            }
            switch (other.segments[index], mine) {
            case (.one, _): continue
            case (.literal(let theirs), .literal(let ours)) where theirs == ours: continue
            default: return false
            }
        }
        if matchesDescendants {
            return other.matchesDescendants && other.segments.count <= segments.count
        }
        return other.segments.count == segments.count && !other.matchesDescendants
    }
}

public enum IdentityPatternError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidID(SPIFFEIDError)
    case partialWildcard(String)
    case doubleStarNotLast
    case noPath

    public var description: String {
        switch self {
        case .invalidID(let error): return error.description
        case .partialWildcard(let segment):
            return "'\(segment)': a wildcard must be a whole segment ('*' or '**'), not part of one"
        case .doubleStarNotLast: return "'**' is allowed only as the last segment"
        case .noPath: return "a pattern must name workloads (a path), not the trust domain itself"
        }
    }
}
