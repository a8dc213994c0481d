internal import CLibevent
import Foundation
import Glibc
import WardConfig
import WardSystem

/// Opens the admin endpoint's listening socket: a Unix socket (a stale file from a dead Ward is
/// replaced; a live one is an error) or a loopback TCP address.
enum AdminSocket {
    static func bind(_ address: AdminAddress) throws(SocketAddressError) -> Int32 {
        switch address {
        case .tcp(let hostPort):
            let resolved = try SocketAddress.resolve(hostPort)
            let fd = try ListenerSocket.bind(resolved, reusePort: false)
            return fd
        case .unix(let path):
            return try bindUnix(path)
        }
    }

    private static func bindUnix(_ path: String) throws(SocketAddressError) -> Int32 {
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty, !FileManager.default.fileExists(atPath: folder) {
            try? FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        }
        _ = try withUnixAddress(path) { _, _ in 0 }  // a path too long fails here, before any socket exists
        if FileManager.default.fileExists(atPath: path) {
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected = try withUnixAddress(path) { connect(probe, $0, $1) }
            Glibc.close(probe)
            if connected == 0 { throw SocketAddressError(message: "admin socket \(path) is in use by another process") }
            unlink(path)
        }
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let bound = try withUnixAddress(path) { Glibc.bind(fd, $0, $1) }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else {
            let reason = CText.lastError
            if fd >= 0 { Glibc.close(fd) }
            throw SocketAddressError(message: "cannot listen on admin socket \(path): \(reason)")
        }
        // Owner and group only: the admin endpoint can reload the proxy.
        chmod(path, 0o660)
        return fd
    }

    /// Calls `body` with `path` as a `sockaddr_un` (for connect or bind), or throws if the path
    /// does not fit one.
    static func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32)
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

/// The admin HTTP endpoint (libevent's evhttp) on the control thread's event loop, never on a
/// data-plane loop. `POST /reload` reloads like SIGHUP and answers with the outcome as JSON.
final class AdminServer {
    private let http: OpaquePointer
    let address: AdminAddress
    let reloader: Reloader

    init(base: OpaquePointer, address: AdminAddress, reloader: Reloader) throws {
        guard let http = evhttp_new(base) else { throw SocketAddressError(message: "evhttp_new failed") }
        self.http = http
        self.address = address
        self.reloader = reloader
        let fd = try AdminSocket.bind(address)
        guard let listener = evconnlistener_new(base, nil, nil, UInt32(LEV_OPT_CLOSE_ON_FREE), 0, fd),
            evhttp_bind_listener(http, listener) != nil
        else {
            Glibc.close(fd)
            evhttp_free(http)
            throw SocketAddressError(message: "cannot serve the admin endpoint on \(address)")
        }
        evhttp_set_allowed_methods(http, UInt16(EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_POST.rawValue))
        // Unretained: the server outlives its evhttp, which deinit frees.
        evhttp_set_gencb(http, adminCallback, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        evhttp_free(http)
        if case .unix(let path) = address { unlink(path) }
    }

    fileprivate func handle(_ request: OpaquePointer) {
        let command = evhttp_request_get_command(request)
        let uri = CText.optional(evhttp_request_get_uri(request)) ?? "/"
        let path = uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri
        switch (path, command) {
        case ("/reload", EVHTTP_REQ_POST):
            let outcome = reloader.reload(trigger: "admin")
            respond(request, outcome.ok ? 200 : 422, outcome.json)
        case ("/healthz", EVHTTP_REQ_GET):
            let (healthy, body) = health()
            respond(request, healthy ? 200 : 503, body)
        case ("/metrics", EVHTTP_REQ_GET):
            respond(request, 200, metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case ("/rules", EVHTTP_REQ_GET):
            respond(request, 200, rules())
        case ("/connections", EVHTTP_REQ_GET):
            respond(request, 200, connections())
        case ("/reload", _), ("/healthz", _), ("/metrics", _), ("/rules", _), ("/connections", _):
            respond(request, 405, "{\"error\":\"method not allowed\"}")
        default:
            respond(request, 404, "{\"error\":\"not found\"}")
        }
    }

    /// 200 while every listener accepts and the own SVID has more than `svid_min_remaining` left.
    private func health() -> (Bool, String) {
        let publication = reloader.store.load()
        let config = publication.snapshot.config
        var reasons: [String] = []
        let stopped = reloader.workers.filter { !$0.isRunning }.count
        if stopped > 0 { reasons.append("\(stopped) worker(s) stopped") }
        let paused = reloader.metrics.workers.reduce(0) { $0 + $1.pausedListenerCount }
        if paused > 0 { reasons.append("\(paused) listener(s) not accepting (out of file descriptors)") }
        let notAfter = publication.snapshot.identity.chain.first?.notAfter ?? 0
        let remaining = notAfter - Int64(Date().timeIntervalSince1970)
        let minimum = config.svidMinRemaining.components.seconds
        if remaining <= minimum {
            reasons.append("own SVID expires in \(remaining)s, under svid_min_remaining (\(minimum)s)")
        }
        var object: [String: Any] = [
            "status": reasons.isEmpty ? "ok" : "unhealthy", "generation": publication.generation,
            "svid_remaining_seconds": remaining, "workers": reloader.workers.count,
        ]
        if !reasons.isEmpty { object["reasons"] = reasons }
        return (reasons.isEmpty, Self.json(object))
    }

    private func metricsText() -> String {
        let publication = reloader.store.load()
        return reloader.metrics.render(
            .init(
                generation: publication.generation,
                svidExpiry: publication.snapshot.identity.chain.first?.notAfter ?? 0,
                logDropped: reloader.log.dropped))
    }

    private func rules() -> String {
        let publication = reloader.store.load()
        let snapshot = publication.snapshot
        let ruleSet = snapshot.ruleSet
        var perListener: [String: Int] = [:]
        for name in ruleSet.listenerNames {
            perListener[name] =
                ruleSet.source.rules.filter { rule in
                    if case .named(let names) = rule.to { return names.contains(name) }
                    return true
                }.count
        }
        return Self.json([
            "generation": publication.generation, "sha256": publication.sourcesDigest,
            "sources": ["config": snapshot.config.configPath, "rules": snapshot.config.rulesFile.path],
            "rules": ruleSet.ruleCount, "default": ruleSet.source.defaultAction.rawValue,
            "mode": ruleSet.source.mode.rawValue, "listeners": perListener,
        ])
    }

    private func connections() -> String {
        let infos = reloader.workers.flatMap { worker in
            worker.onLoop { worker in worker.connections.values.map(\.info) } ?? []
        }.sorted { $0.id < $1.id }
        let list: [[String: Any]] = infos.map { info in
            var entry: [String: Any] = [
                "id": info.id, "listener": info.listener, "peer_addr": info.peerAddress,
                "since": Self.rfc3339(milliseconds: info.sinceEpochMilliseconds), "bytes_in": info.bytesIn,
                "bytes_out": info.bytesOut, "state": info.state,
            ]
            if let peer = info.peerID { entry["peer_id"] = peer }
            return entry
        }
        return Self.json(["connections": list, "count": list.count])
    }

    static func json(_ object: Any) -> String {
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func rfc3339(milliseconds: Int64) -> String {
        var text = ""
        LogLine.appendTimestamp(
            timeval(tv_sec: Int(milliseconds / 1000), tv_usec: Int(milliseconds % 1000) * 1000), to: &text)
        return text
    }

    private func respond(
        _ request: OpaquePointer, _ code: Int32, _ body: String, contentType: String = "application/json"
    ) {
        if let headers = evhttp_request_get_output_headers(request) {
            evhttp_add_header(headers, "Content-Type", contentType)
        }
        guard let buffer = evbuffer_new() else {
            evhttp_send_error(request, 500, nil)
            return
        }
        defer { evbuffer_free(buffer) }
        var text = body.hasSuffix("\n") ? body : body + "\n"
        text.withUTF8 { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
        evhttp_send_reply(request, code, nil, buffer)
    }
}

private let adminCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = { request, context in
    guard let request, let context else { return }
    Unmanaged<AdminServer>.fromOpaque(context).takeUnretainedValue().handle(request)
}

/// The client side, for `ward reload`: one HTTP/1.0 request over the admin socket.
public enum AdminClient {
    public struct Response: Sendable {
        public var status: Int
        public var body: String
    }

    /// Sends `method path` to `address` and waits (up to `timeoutSeconds`) for the whole answer.
    public static func request(_ method: String, _ path: String, to address: AdminAddress, timeoutSeconds: Int = 120)
        throws(SocketAddressError) -> Response
    {
        let fd: Int32
        switch address {
        case .unix(let socketPath):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected: Int32
            do {
                connected = try AdminSocket.withUnixAddress(socketPath) { connect(fd, $0, $1) }
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
            guard resolved.withSockaddr({ connect(fd, $0, $1) }) == 0 else {
                let reason = CText.lastError
                Glibc.close(fd)
                throw SocketAddressError(message: "cannot reach the admin endpoint at \(hostPort): \(reason)")
            }
        }
        defer { Glibc.close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request = "\(method) \(path) HTTP/1.0\r\nHost: ward\r\nContent-Length: 0\r\n\r\n"
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
