internal import CLibevent
import Foundation
import Glibc
import WardConfig
import WardCore
import WardIO
import WardPolicy
import WardSystem

/// Opens the admin endpoint's listening socket: a Unix socket (a stale file from a dead Ward is
/// replaced; a live one is an error) or a loopback TCP address.
enum AdminSocket {
    static func bind(_ address: AdminAddress, allowRemote: Bool) throws(SocketAddressError) -> Int32 {
        switch address {
        case .tcp(let hostPort):
            // Judged again at bind: a name may resolve differently now than at check time.
            let resolved = allowRemote ? try SocketAddress.resolve(hostPort) : try requireLoopback(hostPort)
            return try ListenerSocket.bind(resolved, reusePort: false)
        case .unix(let path):
            return try bindUnix(path)
        }
    }

    /// Whether a socket file is already at `path`; throws if something else is. Never unlink
    /// what is not a socket: a mistyped `admin:` could name the config itself.
    static func existingSocket(_ path: String) throws(SocketAddressError) -> Bool {
        var status = stat()
        guard lstat(path, &status) == 0 else { return false }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw SocketAddressError(message: "\(path) exists and is not a socket; Ward will not replace it")
        }
        return true
    }

    /// Resolves `hostPort` and refuses it unless it is a loopback address: a name such as
    /// `127.evil.example` looks local and may resolve anywhere.
    @discardableResult
    static func requireLoopback(_ hostPort: HostPort) throws(SocketAddressError) -> SocketAddress {
        let resolved = try SocketAddress.resolve(hostPort)
        guard resolved.ipAddress?.isLoopback == true else {
            throw SocketAddressError(
                message: "'\(hostPort)' resolves to \(resolved), not a loopback address "
                    + "(set admin_allow_remote: true to allow it)")
        }
        return resolved
    }

    private static func bindUnix(_ path: String) throws(SocketAddressError) -> Int32 {
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty, !FileManager.default.fileExists(atPath: folder) {
            try? FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        }
        _ = try UnixSocketPath.withAddress(path) { _, _ in 0 }  // a path too long fails here, before any socket exists
        if try existingSocket(path) {
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected = try UnixSocketPath.withAddress(path) { connect(probe, $0, $1) }
            Glibc.close(probe)
            if connected == 0 { throw SocketAddressError(message: "admin socket \(path) is in use by another process") }
            unlink(path)
        }
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let bound = try UnixSocketPath.withAddress(path) { Glibc.bind(fd, $0, $1) }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else {
            let reason = CText.lastError
            if fd >= 0 { Glibc.close(fd) }
            throw SocketAddressError(message: "cannot listen on admin socket \(path): \(reason)")
        }
        // Owner and group only: the admin endpoint can reload the proxy.
        chmod(path, 0o660)
        return fd
    }
}

/// What the admin endpoint answers to one request.
struct AdminResponse {
    var status: Int
    var body: String
    var contentType = "application/json"
}

/// The admin HTTP endpoint on the control thread's event loop, never on a data-plane loop.
/// `POST /reload` reloads like SIGHUP and answers with the outcome as JSON.
///
/// Bounded like a data-plane listener, so a local client cannot take what the data plane needs:
/// at most `maxConnections` at once (more are closed at accept), a request head of at most
/// 8 KiB, no bodies, one request per connection, and `requestTimeoutSeconds` for each.
final class AdminServer {
    static let maxConnections = 64
    static let requestTimeoutSeconds = 10

    private let listener: OpaquePointer
    let address: AdminAddress
    let reloader: Reloader
    /// The owner of every open admin connection: removal is each one's release point.
    private var open: [ObjectIdentifier: AdminConnection] = [:]

    init(base: OpaquePointer, address: AdminAddress, allowRemote: Bool, reloader: Reloader) throws {
        // Bind first: a second Ward that fails here has set nothing, so its deinit never runs
        // and nothing of the first Ward's (its socket file) is unlinked.
        let fd = try AdminSocket.bind(address, allowRemote: allowRemote)
        guard let listener = evconnlistener_new(base, nil, nil, UInt32(LEV_OPT_CLOSE_ON_FREE), 16, fd) else {
            Glibc.close(fd)
            if case .unix(let path) = address { unlink(path) }
            throw SocketAddressError(message: "cannot serve the admin endpoint on \(address)")
        }
        self.listener = listener
        self.address = address
        self.reloader = reloader
        // Unretained: the server outlives its listener, which deinit frees.
        let context = Unmanaged.passUnretained(self).toOpaque()
        evconnlistener_set_cb(listener, adminAcceptCallback, context)
        evconnlistener_set_error_cb(listener, adminAcceptErrorCallback)
        resumeEvent = event_new(base, -1, 0, adminResumeCallback, context)
    }

    /// Re-enables accepting after a pause for lack of descriptors.
    private var resumeEvent: OpaquePointer?

    /// accept(2) failed (EMFILE, ENFILE, ENOMEM): the pending connection stays queued, so the
    /// listener would spin. Pause it for 100 ms, as the data-plane listeners do, and say so once.
    fileprivate func pauseAccepting(error: Int32) {
        evconnlistener_disable(listener)
        if event_pending(resumeEvent, Int16(EV_TIMEOUT), nil) == 0 {
            writeDiagnostic("ward: admin endpoint: accept failed: \(CText.errno(error)); pausing accepts for 100ms\n")
        }
        var pause = timeval(tv_sec: 0, tv_usec: 100_000)
        event_add(resumeEvent, &pause)
    }

    fileprivate func resumeAccepting() {
        evconnlistener_enable(listener)
    }

    deinit {
        // The connections must not call back into a server being deinitialised.
        for connection in open.values { connection.free() }
        open.removeAll()
        evconnlistener_free(listener)
        if let resumeEvent { event_free(resumeEvent) }
        if case .unix(let path) = address { unlink(path) }
    }

    fileprivate func accept(fd: Int32, base: OpaquePointer) {
        // Full: make room by dropping the oldest connection still waiting for its request, so
        // that clients holding connections open cannot lock operators and probes out.
        if open.count >= Self.maxConnections,
            let oldest = open.values.filter({ !$0.answered }).min(by: { $0.since < $1.since })
        {
            oldest.close()
        }
        guard open.count < Self.maxConnections else {
            // Full: refuse at once with an RST, before any byte is read.
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            Glibc.close(fd)
            return
        }
        guard let connection = AdminConnection(server: self, base: base, fd: fd) else { return }
        open[ObjectIdentifier(connection)] = connection
    }

    fileprivate func closed(_ connection: AdminConnection) {
        open[ObjectIdentifier(connection)] = nil
    }

    fileprivate func handle(_ request: AdminRequest) -> AdminResponse {
        if let refusal = crossOriginRefusal(request) {
            return AdminResponse(status: 403, body: Self.json(["error": refusal]))
        }
        switch (request.path, request.method) {
        case ("/reload", "POST"):
            let outcome = reloader.reload(trigger: "admin")
            return AdminResponse(status: outcome.ok ? 200 : 422, body: outcome.json)
        case ("/healthz", "GET"):
            let (healthy, body) = health()
            return AdminResponse(status: healthy ? 200 : 503, body: body)
        case ("/metrics", "GET"):
            return AdminResponse(
                status: 200, body: metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case ("/rules", "GET"):
            return AdminResponse(status: 200, body: rules())
        case ("/connections", "GET"):
            return AdminResponse(status: 200, body: connectionList())
        case ("/reload", _), ("/healthz", _), ("/metrics", _), ("/rules", _), ("/connections", _):
            return AdminResponse(status: 405, body: "{\"error\":\"method not allowed\"}")
        default:
            return AdminResponse(status: 404, body: "{\"error\":\"not found\"}")
        }
    }

    /// Why a request may come from a web page rather than an operator, or nil. A browser can
    /// reach a loopback admin port: a cross-site POST would reload, and a rebound DNS name could
    /// read the endpoints. Browsers send `Host` always and `Origin` on a POST; curl, Prometheus
    /// and `ward reload` send no `Origin` and a loopback `Host`.
    private func crossOriginRefusal(_ request: AdminRequest) -> String? {
        if request.method == "POST", request.header("origin") != nil {
            return "cross-origin request refused (Origin header on a POST)"
        }
        if let site = request.header("sec-fetch-site"), site != "none", site != "same-origin" {
            return "cross-origin request refused (Sec-Fetch-Site: \(site))"
        }
        if case .tcp(let bound) = address, let host = request.header("host"), !Self.isLoopbackHost(host, bound: bound) {
            return "request for another host refused (Host must name this loopback address)"
        }
        return nil
    }

    /// `localhost`, a 127/8 or ::1 literal or the configured name, with the bound port or none.
    static func isLoopbackHost(_ hostHeader: String, bound: HostPort) -> Bool {
        var host = Substring(hostHeader.lowercased())
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let port = host[host.index(after: close)...]
            guard port.isEmpty || port == ":\(bound.port)" else { return false }
            let literal = IPAddress(parsing: host[host.index(after: host.startIndex)..<close])
            return literal.map { !$0.isIPv4 && $0.isLoopback } ?? false
        }
        if let colon = host.lastIndex(of: ":") {
            guard host[host.index(after: colon)...] == "\(bound.port)" else { return false }
            host = host[..<colon]
        }
        if host == "localhost" || host == bound.host.lowercased() { return true }
        return IPAddress(parsing: host)?.isLoopback == true
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
        if let problem = reloader.log.currentWriteProblem {
            reasons.append("connection log writes are failing (\(problem)); lines are kept and retried")
        }
        if let problem = reloader.log.lastReopenProblem {
            reasons.append("connection log could not be reopened (\(problem)); lines go to the file opened before")
        }
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
                logDropped: reloader.log.dropped, logReopenFailures: reloader.log.reopenFailures,
                logWriteFailures: reloader.log.writeFailures))
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
            "sources": ["config": snapshot.config.configPath, "rules": snapshot.config.rulesFile?.path ?? ""],
            "rules": ruleSet.ruleCount, "default": ruleSet.source.defaultAction.rawValue,
            "mode": ruleSet.source.mode.rawValue, "listeners": perListener,
        ])
    }

    private func connectionList() -> String {
        let infos = reloader.workers.flatMap { worker in
            worker.onLoop { worker in worker.connectionInfos } ?? []
        }.sorted { $0.id < $1.id }
        let list: [[String: Any]] = infos.map { info in
            var entry: [String: Any] = [
                "id": info.id, "direction": info.direction, "listener": info.listener, "peer_addr": info.peerAddress,
                "since": Self.rfc3339(milliseconds: info.sinceEpochMilliseconds), "bytes_in": info.bytesIn,
                "bytes_out": info.bytesOut, "state": info.state,
            ]
            if let peer = info.peerID { entry["peer_id"] = peer }
            if let app = info.appAddress { entry["app_addr"] = app }
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
}

/// One admin connection: read one request head, answer, close. Owned by `AdminServer`;
/// C callbacks carry an unretained pointer, valid because `close` frees every callback source
/// before the server drops its reference.
final class AdminConnection {
    private unowned let server: AdminServer
    private var bev: OpaquePointer?
    private var timer: OpaquePointer?
    private(set) var answered = false
    let since = monotonicMicroseconds()

    /// Takes `fd`: on failure it is closed here.
    init?(server: AdminServer, base: OpaquePointer, fd: Int32) {
        self.server = server
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let bev = bufferevent_socket_new(base, fd, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue)) else {
            Glibc.close(fd)
            return nil
        }
        guard let timer = event_new(base, -1, 0, adminTimeoutCallback, context) else {
            bufferevent_free(bev)
            return nil
        }
        self.bev = bev
        self.timer = timer
        bufferevent_setcb(bev, adminReadCallback, adminWriteCallback, adminEventCallback, context)
        // Reading stops once a head's worth is buffered: nobody can make this connection grow.
        bufferevent_setwatermark(bev, Int16(EV_READ), 0, AdminRequest.maxHeadBytes + 4)
        bufferevent_enable(bev, Int16(EV_READ))
        var deadline = timeval(tv_sec: AdminServer.requestTimeoutSeconds, tv_usec: 0)
        event_add(timer, &deadline)
    }

    fileprivate func readable() {
        guard !answered, let bev, let input = bufferevent_get_input(bev) else { return }
        let length = min(evbuffer_get_length(input), AdminRequest.maxHeadBytes + 4)
        guard let head = evbuffer_pullup(input, length) else { return }
        switch AdminRequest.parse(UnsafeBufferPointer(start: head, count: length)) {
        case .incomplete:
            return
        case .complete(let request):
            send(server.handle(request))
        case .refused(let status, let reason):
            send(AdminResponse(status: status, body: AdminServer.json(["error": reason])))
        }
    }

    private func send(_ response: AdminResponse) {
        guard let bev else { return }
        answered = true
        bufferevent_disable(bev, Int16(EV_READ))
        let body = response.body.hasSuffix("\n") ? response.body : response.body + "\n"
        var text =
            "HTTP/1.1 \(response.status) \(Self.reasonPhrase(response.status))\r\n"
            + "Content-Type: \(response.contentType)\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\n\r\n" + body
        text.withUTF8 { _ = bufferevent_write(bev, $0.baseAddress, $0.count) }
        bufferevent_enable(bev, Int16(EV_WRITE))
    }

    /// The whole answer went out: done.
    fileprivate func drained() {
        if answered { close() }
    }

    /// Frees the socket and timer, then drops the server's reference: the one release point.
    func close() {
        free()
        server.closed(self)
    }

    /// Frees the socket and timer (closing the connection) without telling the server.
    func free() {
        if let timer { event_free(timer) }
        timer = nil
        if let bev { bufferevent_free(bev) }
        bev = nil
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 413: return "Content Too Large"
        case 422: return "Unprocessable Content"
        case 431: return "Request Header Fields Too Large"
        case 503: return "Service Unavailable"
        default: return "Status"
        }
    }
}

private let adminAcceptCallback:
    @convention(c) (OpaquePointer?, Int32, UnsafeMutablePointer<sockaddr>?, Int32, UnsafeMutableRawPointer?)
        -> Void = { listener, fd, _, _, context in
            guard let listener, let context, let base = evconnlistener_get_base(listener) else {
                Glibc.close(fd)
                return
            }
            Unmanaged<AdminServer>.fromOpaque(context).takeUnretainedValue().accept(fd: fd, base: base)
        }

private let adminAcceptErrorCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    _, context in
    let error = errno
    guard let context else { return }
    Unmanaged<AdminServer>.fromOpaque(context).takeUnretainedValue().pauseAccepting(error: error)
}

private let adminResumeCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<AdminServer>.fromOpaque(context).takeUnretainedValue().resumeAccepting()
}

private func adminConnection(_ context: UnsafeMutableRawPointer?) -> AdminConnection {
    Unmanaged<AdminConnection>.fromOpaque(context!).takeUnretainedValue()
}

private let adminReadCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    adminConnection($1).readable()
}
private let adminWriteCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    adminConnection($1).drained()
}
private let adminEventCallback: @convention(c) (OpaquePointer?, Int16, UnsafeMutableRawPointer?) -> Void = {
    adminConnection($2).close()
}
private let adminTimeoutCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    adminConnection($2).close()
}
