/// What a decision may depend on besides the peer's identity. A value type: building and
/// passing one allocates nothing.
public struct DecisionContext: Sendable {
    /// The peer's IP address, or nil where there is none (Unix sockets, `ward explain` without --addr).
    public var address: IPAddress?
    /// Minutes since midnight UTC at the time of the decision.
    public var minuteOfDay: Int
    /// notAfter − notBefore of the peer's leaf certificate, in seconds.
    public var svidLifetimeSeconds: Int64

    public init(address: IPAddress?, minuteOfDay: Int, svidLifetimeSeconds: Int64) {
        self.address = address
        self.minuteOfDay = minuteOfDay
        self.svidLifetimeSeconds = svidLifetimeSeconds
    }
}

/// An IPv4 or IPv6 address as 16 bytes (IPv4 as the IPv4-mapped IPv6 form, so one CIDR
/// comparison serves both families).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    public var isIPv4: Bool { high == 0 && low >> 32 == 0xffff }
    /// 127.0.0.0/8 or ::1.
    public var isLoopback: Bool { isIPv4 ? (low >> 24) & 0xff == 127 : high == 0 && low == 1 }
    /// 0.0.0.0 or ::, the wildcard a socket binds to for every address.
    public var isUnspecified: Bool { isIPv4 ? low & 0xffff_ffff == 0 : high == 0 && low == 0 }

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init(ipv4 bytes: (UInt8, UInt8, UInt8, UInt8)) {
        high = 0
        low = 0xffff << 32 | UInt64(bytes.0) << 24 | UInt64(bytes.1) << 16 | UInt64(bytes.2) << 8 | UInt64(bytes.3)
    }

    /// Parses dotted IPv4 or RFC 4291 IPv6 text.
    public init?(parsing text: Substring) {
        if text.contains(":") {
            guard let parsed = Self.parseIPv6(text) else { return nil }
            self = parsed
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4 else { return nil }
            var bytes: [UInt8] = []
            for part in parts {
                guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let value = UInt8(part) else {
                    return nil
                }
                bytes.append(value)
            }
            self.init(ipv4: (bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    }

    private static func parseIPv6(_ text: Substring) -> IPAddress? {
        let halves = text.split(separator: "::", maxSplits: 1, omittingEmptySubsequences: false)
        func groups(_ part: Substring) -> [UInt16]? {
            guard !part.isEmpty else { return [] }
            var result: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, group) in pieces.enumerated() {
                // The last 32 bits may be written as dotted IPv4 (`::ffff:10.0.0.1`).
                if index == pieces.count - 1, group.contains("."), let v4 = IPAddress(parsing: group), v4.isIPv4 {
                    result += [UInt16(truncatingIfNeeded: v4.low >> 16), UInt16(truncatingIfNeeded: v4.low)]
                    continue
                }
                guard (1...4).contains(group.count), let value = UInt16(group, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            all += [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        let high = all[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = all[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return IPAddress(high: high, low: low)
    }

    public var description: String {
        if isIPv4 {
            return (0..<4).map { String(low >> (24 - 8 * $0) & 0xff) }.joined(separator: ".")
        }
        let groups = (0..<8).map { index -> String in
            let word = index < 4 ? high >> (48 - 16 * index) : low >> (48 - 16 * (index - 4))
            return String(word & 0xffff, radix: 16)
        }
        return groups.joined(separator: ":")
    }
}

/// An address range such as `10.0.0.0/8` or `2001:db8::/32`.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let network: IPAddress
    /// Prefix length over the 128-bit form (IPv4 prefixes are offset by 96).
    public let prefixLength: Int
    public let description: String

    /// Parses `ADDR/LEN`, or a bare address as a single host.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(parsing: parts[0]) else { return nil }
        let maximum = address.isIPv4 ? 32 : 128
        var length = maximum
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...maximum).contains(parsed), parts[1].allSatisfy(\.isNumber) else {
                return nil
            }
            length = parsed
        }
        self.prefixLength = address.isIPv4 ? length + 96 : length
        self.network = Self.masked(address, prefixLength)
        self.description = text
    }

    public func contains(_ address: IPAddress) -> Bool {
        Self.masked(address, prefixLength) == network
    }

    private static func masked(_ address: IPAddress, _ length: Int) -> IPAddress {
        func mask(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? .max : ~(UInt64.max >> bits) }
        return IPAddress(high: address.high & mask(length), low: address.low & mask(length - 64))
    }
}

/// `HH:MM-HH:MM` in UTC, start inclusive, end exclusive; a range may wrap midnight.
public struct HourRange: Hashable, Sendable, CustomStringConvertible {
    public let start: Int
    public let end: Int
    public let description: String

    public init?(parsing text: String) {
        let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let start = Self.minute(bounds[0]), let end = Self.minute(bounds[1]), start != end
        else { return nil }
        self.start = start
        self.end = end
        self.description = text
    }

    public func contains(minuteOfDay minute: Int) -> Bool {
        start < end ? (start <= minute && minute < end) : (minute >= start || minute < end)
    }

    private static func minute(_ text: Substring) -> Int? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 2, parts[1].count == 2,
            let hour = Int(parts[0]), let minute = Int(parts[1]), (0...24).contains(hour), (0..<60).contains(minute),
            hour < 24 || minute == 0
        else { return nil }
        return hour * 60 + minute
    }
}

/// A rule's `when:` block: the rule matches only if every condition given holds.
public struct RuleConditions: Hashable, Sendable {
    public var sources: [CIDR]
    public var hours: HourRange?
    public var maxSVIDLifetimeSeconds: Int64?

    public init(sources: [CIDR] = [], hours: HourRange? = nil, maxSVIDLifetimeSeconds: Int64? = nil) {
        self.sources = sources
        self.hours = hours
        self.maxSVIDLifetimeSeconds = maxSVIDLifetimeSeconds
    }

    public var isEmpty: Bool { sources.isEmpty && hours == nil && maxSVIDLifetimeSeconds == nil }

    /// The first condition that fails in `context`, or nil when all hold.
    public func failure(in context: DecisionContext) -> ConditionFailure? {
        if !sources.isEmpty {
            guard let address = context.address, sources.contains(where: { $0.contains(address) }) else {
                return .source
            }
        }
        if let hours, !hours.contains(minuteOfDay: context.minuteOfDay) { return .hours }
        if let limit = maxSVIDLifetimeSeconds, context.svidLifetimeSeconds > limit { return .maxSVIDTTL }
        return nil
    }
}

/// Which `when:` condition kept a rule from matching.
public enum ConditionFailure: String, Sendable {
    case source
    case hours
    case maxSVIDTTL = "max_svid_ttl"
}
