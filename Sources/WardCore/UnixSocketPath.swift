import Glibc

/// A Unix socket path as a `sockaddr_un`, for the admin socket's bind and the client's connect.
package enum UnixSocketPath {
    /// Calls `body` with `path` as a `sockaddr_un` (for connect or bind), or throws if the path
    /// does not fit one.
    package static func withAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32)
        throws(SocketAddressError) -> Int32
    {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SocketAddressError(message: "admin socket path too long (max 107 bytes): \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
