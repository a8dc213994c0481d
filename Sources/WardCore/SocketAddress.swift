internal import CLibevent
import Glibc
import WardConfig
import WardIO
import WardPolicy
import WardSystem

/// A resolved socket address, stored by value so the hot path never resolves names.
public struct SocketAddress: Sendable, CustomStringConvertible {
    private var storage = sockaddr_storage()
    private(set) var length: socklen_t = 0

    package var family: Int32 { Int32(storage.ss_family) }

    /// Resolves `hostPort` once (blocking `getaddrinfo`): call at load time only.
    public static func resolve(_ hostPort: HostPort) throws(SocketAddressError) -> SocketAddress {
        try resolveAll(hostPort)[0]
    }

    /// Every address `hostPort` resolves to, in `getaddrinfo`'s order (never empty).
    package static func resolveAll(_ hostPort: HostPort) throws(SocketAddressError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG
        var results: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(hostPort.host, String(hostPort.port), &hints, &results)
        guard status == 0, results != nil else {
            throw SocketAddressError(
                message: "cannot resolve \(hostPort): \(CText.string(gai_strerror(status), or: "error \(status)"))")
        }
        defer { freeaddrinfo(results) }
        var addresses: [SocketAddress] = []
        var next = results
        while let entry = next {
            if let address = entry.pointee.ai_addr {
                addresses.append(SocketAddress(address, length: entry.pointee.ai_addrlen))
            }
            next = entry.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw SocketAddressError(message: "cannot resolve \(hostPort): no address") }
        return addresses
    }

    /// The IP addresses of this host's interfaces: a wildcard listen takes connections for each.
    package static func hostAddresses() -> Set<IPAddress> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var addresses: Set<IPAddress> = []
        var next = list
        while let entry = next {
            if let address = entry.pointee.ifa_addr {
                let family = Int32(address.pointee.sa_family)
                let length =
                    family == AF_INET
                    ? MemoryLayout<sockaddr_in>.size : family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : 0
                if length > 0, let ip = SocketAddress(address, length: socklen_t(length)).ipAddress {
                    addresses.insert(ip)
                }
            }
            next = entry.pointee.ifa_next
        }
        return addresses
    }

    /// Builds from what `accept` returned.
    init(_ pointer: UnsafePointer<sockaddr>, length: socklen_t) {
        withUnsafeMutableBytes(of: &storage) { target in
            target.copyMemory(
                from: UnsafeRawBufferPointer(
                    start: pointer, count: Int(min(length, socklen_t(MemoryLayout<sockaddr_storage>.size)))))
        }
        self.length = length
    }

    private init() {}

    /// connect(2) to this address; for the admin client.
    package func connect(_ fd: Int32) -> Int32 {
        withSockaddr { Glibc.connect(fd, $0, $1) }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    private static func string(_ nulTerminated: [CChar]) -> String {
        let bytes = nulTerminated.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The address for `when.source` conditions (IPv4-mapped IPv6 folds to IPv4).
    package var ipAddress: IPAddress? {
        withUnsafeBytes(of: storage) { raw -> IPAddress? in
            if family == AF_INET {
                let bytes = raw.load(as: sockaddr_in.self).sin_addr.s_addr  // network order in memory
                return withUnsafeBytes(of: bytes) { IPAddress(ipv4: ($0[0], $0[1], $0[2], $0[3])) }
            } else if family == AF_INET6 {
                let address = raw.load(as: sockaddr_in6.self).sin6_addr
                return withUnsafeBytes(of: address) { octets in
                    let high = octets.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    let low = octets.suffix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    return IPAddress(high: high, low: low)
                }
            }
            return nil
        }
    }

    /// Whether a connection to `target` arrives at this listen address: the same port, and the
    /// same IP, or this one the wildcard and `target` one of this host's own addresses.
    package func isReached(by target: SocketAddress, hostAddresses: Set<IPAddress>) -> Bool {
        guard let port, port == target.port, let ip = ipAddress, let targetIP = target.ipAddress else { return false }
        if ip == targetIP { return true }
        return ip.isUnspecified && (targetIP.isLoopback || targetIP.isUnspecified || hostAddresses.contains(targetIP))
    }

    /// Whether a socket bound to one address would take connections meant for the other: the
    /// same port, and the same IP or either one the wildcard (0.0.0.0 or ::).
    package func overlaps(_ other: SocketAddress) -> Bool {
        guard let port, port == other.port, let ip = ipAddress, let otherIP = other.ipAddress else { return false }
        return ip == otherIP || ip.isUnspecified || otherIP.isUnspecified
    }

    package var port: UInt16? {
        withUnsafeBytes(of: storage) { raw -> UInt16? in
            if family == AF_INET { return UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port) }
            if family == AF_INET6 { return UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port) }
            return nil
        }
    }

    /// The address as a PROXY v2 header carries it: raw address bytes and the port.
    var proxyAddress: ProxyHeader.Address? {
        withUnsafeBytes(of: storage) { raw -> ProxyHeader.Address? in
            if family == AF_INET {
                let address = raw.load(as: sockaddr_in.self)
                let bytes = withUnsafeBytes(of: address.sin_addr) { Array($0) }
                return .ipv4(bytes, port: UInt16(bigEndian: address.sin_port))
            } else if family == AF_INET6 {
                let address = raw.load(as: sockaddr_in6.self)
                let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
                return .ipv6(bytes, port: UInt16(bigEndian: address.sin6_port))
            }
            return nil
        }
    }

    /// The local address of a connected socket (for an accepted one: the listener's address).
    static func local(of fd: Int32) -> SocketAddress? { named(fd, getsockname) }

    /// The remote address of a connected socket.
    static func peer(of fd: Int32) -> SocketAddress? { named(fd, getpeername) }

    private static func named(
        _ fd: Int32, _ query: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) -> SocketAddress? {
        var address = SocketAddress()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &address.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { query(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        address.length = length
        return address
    }

    /// `1.2.3.4:5` or `[::1]:5`.
    public var description: String {
        withUnsafeBytes(of: storage) { raw -> String in
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            if family == AF_INET {
                let address = raw.load(as: sockaddr_in.self)
                var ip = address.sin_addr
                inet_ntop(AF_INET, &ip, &text, socklen_t(text.count))
                return "\(Self.string(text)):\(UInt16(bigEndian: address.sin_port))"
            } else if family == AF_INET6 {
                let address = raw.load(as: sockaddr_in6.self)
                var ip = address.sin6_addr
                inet_ntop(AF_INET6, &ip, &text, socklen_t(text.count))
                return "[\(Self.string(text))]:\(UInt16(bigEndian: address.sin6_port))"
            }
            return "unknown"
        }
    }
}

public struct SocketAddressError: Error, Sendable, CustomStringConvertible {
    public var message: String
    package init(message: String) { self.message = message }
    public var description: String { message }
}
