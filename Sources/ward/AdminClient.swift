import Foundation
import Glibc
import WardConfig
import WardControl
import WardCore
import WardSystem

/// The client side, for `ward reload`: one HTTP/1.0 request over the admin socket.
enum AdminClient {
    struct Response: Sendable {
        var status: Int
        var body: String
    }

    /// Sends `method path` to `address` and waits (up to `timeoutSeconds`) for the whole answer.
    static func request(_ method: String, _ path: String, to address: AdminAddress, timeoutSeconds: Int = 120)
        throws(SocketAddressError) -> Response
    {
        let fd: Int32
        switch address {
        case .unix(let socketPath):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected: Int32
            do {
                connected = try UnixSocketPath.withAddress(socketPath) { connect(fd, $0, $1) }
            } catch {
                Glibc.close(fd)
                throw error
            }
            guard connected == 0 else {
                let reason = CText.lastError
                Glibc.close(fd)
                throw SocketAddressError(message: "cannot reach the admin endpoint at \(socketPath): \(reason)")
            }
        case .tcp(let hostPort):
            let resolved = try SocketAddress.resolve(hostPort)
            fd = socket(resolved.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard resolved.connect(fd) == 0 else {
                let reason = CText.lastError
                Glibc.close(fd)
                throw SocketAddressError(message: "cannot reach the admin endpoint at \(hostPort): \(reason)")
            }
        }
        defer { Glibc.close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // The admin endpoint refuses a Host that is not its own loopback address.
        let host: String
        if case .tcp(let hostPort) = address { host = hostPort.description } else { host = "localhost" }
        var request = "\(method) \(path) HTTP/1.0\r\nHost: \(host)\r\nContent-Length: 0\r\n\r\n"
        _ = request.withUTF8 { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 { break }
            received += chunk[0..<count]
        }
        let text = String(decoding: received, as: UTF8.self)
        guard let headerEnd = text.range(of: "\r\n\r\n"),
            let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap({ Int($0) })
        else { throw SocketAddressError(message: "no answer from the admin endpoint at \(address)") }
        return Response(status: status, body: String(text[headerEnd.upperBound...]))
    }
}
