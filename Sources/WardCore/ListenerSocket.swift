internal import CLibevent
import Foundation
import Glibc
import WardSystem

/// Binds the listening sockets: one per worker per listener, all with SO_REUSEPORT so the
/// kernel spreads accepts across workers.
package enum ListenerSocket {
    static let backlog: Int32 = 1024

    /// Fails with EADDRINUSE when anyone else holds the port, even another SO_REUSEPORT
    /// process of the same user, which a plain SO_REUSEPORT bind would silently join.
    package static func checkAvailable(_ address: SocketAddress) throws(SocketAddressError) {
        let fd = try makeSocket(address, reusePort: false)
        Glibc.close(fd)
    }

    package static func bind(_ address: SocketAddress, reusePort: Bool = true) throws(SocketAddressError) -> Int32 {
        let fd = try makeSocket(address, reusePort: reusePort)
        guard listen(fd, backlog) == 0 else {
            let reason = CText.lastError
            Glibc.close(fd)
            throw SocketAddressError(message: "cannot listen on \(address): \(reason)")
        }
        return fd
    }

    private static func makeSocket(_ address: SocketAddress, reusePort: Bool) throws(SocketAddressError) -> Int32 {
        let fd = socket(
            address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0)
        guard fd >= 0 else { throw SocketAddressError(message: "socket: \(CText.lastError)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let bound = address.withSockaddr { Glibc.bind(fd, $0, $1) }
        guard bound == 0 else {
            let reason = CText.lastError
            Glibc.close(fd)
            throw SocketAddressError(message: "cannot listen on \(address): \(reason)")
        }
        return fd
    }
}
