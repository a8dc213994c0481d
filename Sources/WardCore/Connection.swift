internal import CLibevent
import Glibc
import WardIO
import WardIdentity
import WardObservability
import WardPolicy
import WardSystem
import WardTLS

/// Why an allowed connection ended; the `close_cause` log field.
enum CloseCause: String {
    case client
    case upstream
    case idleTimeout = "idle_timeout"
    case shutdown
    case error
    case revoked
}

/// Which side of Ward a connection is on, and the listener or outbound entry it came through.
enum Endpoint {
    /// A peer called a listener: TLS in, plaintext to the upstream.
    case listener(Int)
    /// The local app called an outbound entry: plaintext in, TLS to the target.
    case outbound(Int)

    var isOutbound: Bool {
        if case .outbound = self { return true }
        return false
    }

    /// The `direction` log field.
    var direction: String { isOutbound ? "outbound" : "inbound" }
}

/// One connection from accept to close, in either direction.
///
/// Inbound: the TLS handshake (`TLSStream`, server role), admission (`Admission`: SVID and
/// rules), the upstream connect, then forwarding (`Splice`). Outbound: the target connect, the
/// TLS handshake (client role), admission (the server's SVID and `server_id`), then forwarding.
/// The app's bytes wait in its socket until the server is admitted: a refused server gets none.
///
/// Runs on its loop's thread only. Owned by `LoopState.connections`; C callbacks (its timers)
/// carry an unretained pointer, valid because `release` frees them before the loop drops its
/// reference.
final class Connection: TLSHandshakeDelegate, SpliceDelegate {
    enum State {
        case handshaking
        case connectingUpstream
        case forwarding
        case closed
    }

    let id: UInt64
    let loop: LoopState
    let endpoint: Endpoint
    /// Slot of the listener or outbound entry in counters and `max_connections` (`LoopState.slot`).
    let slot: Int
    /// The TLS peer's address: the client (inbound) or the target (outbound).
    let peerAddress: String
    let peerIP: IPAddress?
    /// Outbound: the local app's address.
    private let appAddress: String?
    let check = PeerCheck()
    private(set) var state = State.handshaking
    /// The TLS side: the client (inbound) or the target (outbound).
    private var stream: TLSStream?
    /// The plaintext side: the upstream (inbound) or the local app (outbound).
    private var plain: SocketStream?
    /// Outbound: the target socket while it connects, before TLS takes it over.
    private var connector: SocketStream?
    private var splice: Splice?
    /// Handshake, then upstream-connect, then idle timeout: one timer for the current phase.
    private var timer: OpaquePointer?
    /// Fires when the peer's SVID reaches notAfter (`peer_expiry: close`).
    private var expiryTimer: OpaquePointer?
    private var admission: Admission
    private var decision: Decision?
    private var tlsVersion: String?
    private var cipher: String?
    private let acceptedAt: Int64
    private let acceptedAtMicroseconds = monotonicMicroseconds()

    /// Counted in `ward_active_connections` (allowed or audit-passed), so close uncounts it.
    private var counted = false
    private var lastActivity: Int64
    private var bytesIn: Int64 = 0
    private var bytesOut: Int64 = 0
    private var closeReason: ReasonCode?
    private var closeDetail: String?
    /// Outbound: the app ended its stream first, so nothing of it is left to read.
    private var appEnded = false

    init(
        id: UInt64, loop: LoopState, endpoint: Endpoint, peerAddress: String, peerIP: IPAddress?,
        appAddress: String? = nil
    ) {
        self.id = id
        self.loop = loop
        self.endpoint = endpoint
        self.slot = loop.slot(of: endpoint)
        self.peerAddress = peerAddress
        self.peerIP = peerIP
        self.appAddress = appAddress
        self.acceptedAt = loop.nowMilliseconds
        self.lastActivity = acceptedAt
        self.admission = Admission(generation: loop.generation)
    }

    private var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
    private var endpointName: String { loop.name(of: endpoint) }

    /// Inbound: `fd` is the accepted client socket; the handshake starts at once.
    func start(fd: Int32) {
        timer = event_new(loop.base, -1, 0, timerCallback, context)
        guard !endpoint.isOutbound else {
            // Outbound: `fd` is the app; it is not read until the server is admitted.
            plain = SocketStream(fd: fd, base: loop.base)
            connectUpstream()
            return
        }
        guard
            let stream = TLSStream(
                context: loop.tls, fd: fd, base: loop.base, check: check, staging: loop.buffers.staging)
        else {
            Glibc.close(fd)
            failHandshake(.tlsError, detail: "cannot allocate TLS session")
            return
        }
        startHandshake(stream)
    }

    private func startHandshake(_ stream: TLSStream) {
        state = .handshaking
        self.stream = stream
        stream.handshakeDelegate = self
        arm(timer, loop.handshakeTimeout)
        stream.startHandshake()
    }

    // MARK: Handshake and decision

    func handshakeFailed(_ stream: TLSStream, reason: ReasonCode, detail: String?) {
        failHandshake(reason, detail: detail)
    }

    func handshakeCompleted(_ stream: TLSStream) {
        let verdict = admission.admitHandshake(stream, check: check, loop: loop, endpoint: endpoint, peerIP: peerIP)
        tlsVersion = stream.protocolVersion
        cipher = stream.cipher
        let decision: Decision
        switch verdict {
        case .admitted(let admitted):
            decision = admitted
        case .refused(.ruleDenied, _, let denied?):
            decision = denied
        case .refused(let reason, let detail, _):
            failHandshake(reason, detail: detail)
            return
        }
        let metrics = loop.metrics
        metrics.handshakeDuration(seconds: Double(monotonicMicroseconds() - acceptedAtMicroseconds) / 1e6)
        if let notAfter = check.notAfter {
            metrics.peerSVIDRemaining(seconds: Double(notAfter - Int64(loop.now.tv_sec)))
        }
        self.decision = decision
        if decision.isAllowed {
            metrics.connection(listener: slot, .allow)
            var line = record("allow")
            line.add("resumed", stream.isResumed)
            loop.log.append(line.finish())
        } else {
            metrics.connection(listener: slot, decision.enforced ? .deny : .auditDeny)
            var line = record("deny")
            line.add("reason", ReasonCode.ruleDenied.rawValue)
            line.add("enforced", decision.enforced)
            loop.log.append(line.finish())
        }
        guard decision.letsThrough else {
            stream.forgetSession()
            stream.sendCloseNotify()
            release(linger: true)
            return
        }
        counted = true
        metrics.active(listener: slot, 1)
        armExpiry()
        if endpoint.isOutbound { startForwarding() } else { connectUpstream() }
    }

    private func failHandshake(_ reason: ReasonCode, detail: String?) {
        loop.metrics.handshakeError(listener: slot, reason: reason.index)
        var line = record("handshake_error")
        line.add("reason", reason.rawValue)
        line.add("detail", detail)
        loop.logHandshakeError(line, source: peerIP, reason: reason, outbound: endpoint.isOutbound)
        // Ward's alert, if OpenSSL wrote one, is already sent: linger so it is read, not reset.
        release(linger: true)
    }

    /// After a reload: is this peer still allowed under the new trust bundles and rules? If not,
    /// the connection is closed and logged as `revoke`, then `close` with `close_cause: revoked`.
    func recheck() {
        guard state == .connectingUpstream || state == .forwarding, let stream,
            let verdict = admission.recheck(stream, check: check, loop: loop, endpoint: endpoint, peerIP: peerIP)
        else { return }
        switch verdict {
        case .admitted:
            armExpiry()
        case .refused(let reason, let detail, let decision):
            revoke(reason: reason, detail: detail, decision: decision)
        }
    }

    /// When the peer's authentication ends: the earliest notAfter of its verified chain.
    private var authenticatedUntil: Int64? { check.validUntil ?? check.notAfter }

    /// With `peer_expiry: close`, a timer for the moment the peer's SVID expires: a connection
    /// must not outlive the identity that opened it.
    private func armExpiry() {
        guard loop.snapshot.config.peerExpiry == .close, let notAfter = authenticatedUntil else {
            if let expiryTimer { event_del(expiryTimer) }
            return
        }
        if expiryTimer == nil { expiryTimer = event_new(loop.base, -1, 0, expiryCallback, context) }
        let remaining = max(0, notAfter - Int64(loop.now.tv_sec))
        arm(expiryTimer, timeval(tv_sec: Int(remaining), tv_usec: 0))
    }

    fileprivate func expiryFired() {
        guard state == .connectingUpstream || state == .forwarding, let notAfter = authenticatedUntil else { return }
        // A wall clock stepped back since arming: wait for the rest.
        if Int64(loop.now.tv_sec) < notAfter {
            armExpiry()
            return
        }
        let which = notAfter == check.notAfter ? "peer SVID" : "a certificate of the peer's chain"
        revoke(
            reason: .expired, detail: "\(which) expired at \(LogLine.rfc3339(epochSeconds: notAfter))",
            decision: decision)
    }

    private func revoke(reason: ReasonCode, detail: String?, decision: Decision?) {
        self.decision = decision
        var line = record("revoke")
        line.add("reason", reason.rawValue)
        line.add("detail", detail)
        line.add("close_cause", CloseCause.revoked.rawValue)
        loop.log.append(line.finish())
        closeReason = reason
        close(cause: .revoked)
    }

    // MARK: Upstream

    /// Connects to the listener's upstream (inbound, after admission) or the entry's target
    /// (outbound, before the handshake).
    private func connectUpstream() {
        state = .connectingUpstream
        let target: SocketAddress
        switch endpoint {
        case .listener(let index): target = loop.snapshot.listeners[index].upstream
        case .outbound(let index): target = loop.snapshot.outbound[index].target
        }
        let fd = socket(
            target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0
        )
        guard fd >= 0 else {
            upstreamFailed(detail: errnoDescription(errno))
            return
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let socket = SocketStream(fd: fd, base: loop.base)
        if case .listener = endpoint { plain = socket } else { connector = socket }
        socket.onConnected = { [unowned self] code in self.upstreamConnected(error: code) }
        arm(timer, loop.upstreamConnectTimeout)
        let code = target.withSockaddr { address, length in socket.connect(to: address, length: length) }
        if code != 0 { upstreamFailed(detail: errnoDescription(code)) }
    }

    private func upstreamFailed(detail: String) {
        closeReason = .upstreamUnreachable
        closeDetail = detail
        // Inbound it follows an allow; outbound nothing else counts the attempt.
        if endpoint.isOutbound {
            loop.metrics.handshakeError(listener: slot, reason: ReasonCode.upstreamUnreachable.index)
        }
        close(cause: .error)
    }

    private func upstreamConnected(error: Int32) {
        guard state == .connectingUpstream else { return }
        guard error == 0 else {
            upstreamFailed(detail: errnoDescription(error))
            return
        }
        switch endpoint {
        case .listener(let index):
            guard let stream, let upstream = plain else { return }
            if loop.snapshot.listeners[index].proxyProtocol == .v2 {
                // Before any byte of the client's: who connected, over what, as which workload.
                guard let source = SocketAddress.peer(of: stream.fd)?.proxyAddress,
                    let destination = SocketAddress.local(of: stream.fd)?.proxyAddress,
                    let header = ProxyHeader(
                        source: source, destination: destination, tlsVersion: tlsVersion, cipher: cipher,
                        spiffeID: check.id?.description
                    ).encoded()
                else {
                    closeDetail = "no PROXY v2 header for this connection's addresses"
                    close(cause: .error)
                    return
                }
                header.withUnsafeBytes { _ = upstream.write($0) }
            }
            startForwarding()
        case .outbound(let index):
            guard let connector, let context = loop.clientTLS else { return }
            let entry = loop.snapshot.outbound[index]
            let fd = connector.detachSocket()
            self.connector = nil
            guard
                let stream = TLSStream(
                    context: context, fd: fd, base: loop.base, check: check, staging: loop.buffers.staging,
                    role: .client)
            else {
                Glibc.close(fd)
                failHandshake(.tlsError, detail: "cannot allocate TLS session")
                return
            }
            check.requirement = entry.serverIDs
            stream.prepareClientHello(serverName: entry.serverName, entry: index)
            startHandshake(stream)
        }
    }

    /// Both sides are ready: forward until either ends, with the idle timer armed.
    private func startForwarding() {
        guard let stream, let plain else { return }
        state = .forwarding
        lastActivity = loop.nowMilliseconds
        let idle = loop.idleTimeoutMilliseconds
        arm(timer, timeval(tv_sec: Int(idle / 1000), tv_usec: Int(idle % 1000) * 1000))
        let splice: Splice
        switch endpoint {
        case .listener: splice = Splice(client: stream, upstream: plain, buffer: loop.buffers.plaintext)
        case .outbound: splice = Splice(client: plain, upstream: stream, buffer: loop.buffers.plaintext)
        }
        self.splice = splice
        splice.delegate = self
        splice.start()
    }

    // MARK: Forwarding

    func splice(_ splice: Splice, moved count: Int, towardUpstream: Bool) {
        if towardUpstream { bytesIn += Int64(count) } else { bytesOut += Int64(count) }
        loop.metrics.bytes(listener: slot, towardUpstream ? .incoming : .outgoing, Int64(count))
        lastActivity = loop.nowMilliseconds
    }

    func spliceFinished(_ splice: Splice, end: Splice.End) {
        switch end {
        case .finished(let first):
            appEnded = first == .client
            close(cause: first == .client ? .client : .upstream)
        case .failed(_, let detail):
            // One side aborted: the other must not read what it got as the whole stream, so no
            // close_notify to the client and a reset, not FIN, to both.
            closeDetail = detail
            close(cause: .error, abort: true)
        }
    }

    // MARK: Timers

    fileprivate func timerFired() {
        switch state {
        case .handshaking:
            failHandshake(.handshakeTimeout, detail: nil)
        case .connectingUpstream:
            upstreamFailed(detail: "connect timed out")
        case .forwarding:
            let idle = loop.nowMilliseconds - lastActivity
            if idle >= loop.idleTimeoutMilliseconds {
                close(cause: .idleTimeout)
            } else {
                let remaining = loop.idleTimeoutMilliseconds - idle
                arm(timer, timeval(tv_sec: Int(remaining / 1000), tv_usec: Int(remaining % 1000) * 1000))
            }
        case .closed:
            break
        }
    }

    private func arm(_ event: OpaquePointer?, _ after: timeval) {
        guard let event else { return }
        var wait = after
        event_add(event, &wait)
    }

    // MARK: Closing

    /// Ends an allowed connection: logs `close`, sends close_notify, frees everything. With
    /// `abort`, both sockets are reset instead and the client gets no close_notify.
    func close(cause: CloseCause, abort: Bool = false) {
        guard state != .closed else { return }
        if state == .handshaking {
            failHandshake(.tlsError, detail: "closed by \(cause.rawValue)")
            return
        }
        var line = record("close")
        line.add("reason", closeReason?.rawValue)
        line.add("detail", closeDetail)
        line.add("bytes_in", bytesIn)
        line.add("bytes_out", bytesOut)
        line.add("duration_ms", loop.nowMilliseconds - acceptedAt)
        line.add("close_cause", cause.rawValue)
        loop.log.append(line.finish())
        if counted { loop.metrics.active(listener: slot, -1) }
        if cause == .revoked { loop.metrics.revoked() }
        if abort {
            plain?.abort()
            stream?.abort()
        } else {
            stream?.sendCloseNotify()
        }
        release(linger: cause != .shutdown)
    }

    /// Frees every callback source, then drops the loop's reference: the one release point.
    /// With `linger`, the client socket closes after its peer read Ward's last word (`Lingering`).
    private func release(linger: Bool) {
        state = .closed
        loop.load.release(slot)
        if let timer { event_free(timer) }
        timer = nil
        if let expiryTimer { event_free(expiryTimer) }
        expiryTimer = nil
        // Outbound, unless the app itself ended the stream, it may still be sending: a close with
        // its bytes unread would reset it, so it reads a plain end of stream instead.
        if linger, endpoint.isOutbound, !appEnded, let plain, !plain.isClosed {
            loop.lingering.close(plain.detachSocket())
        }
        splice = nil
        plain?.closeSocket()
        plain = nil
        connector?.closeSocket()
        connector = nil
        if let stream, !stream.isClosed {
            if linger { loop.lingering.close(stream.detachSocket()) } else { stream.closeSocket() }
        }
        stream = nil
        loop.connections[id] = nil
    }

    /// What `GET /connections` shows; built on the loop thread.
    var info: ConnectionInfo {
        ConnectionInfo(
            id: id, direction: endpoint.direction, listener: endpointName,
            peerID: check.id?.description, peerAddress: peerAddress, appAddress: appAddress,
            sinceEpochMilliseconds: acceptedAt, bytesIn: bytesIn, bytesOut: bytesOut,
            state: "\(state)")
    }

    // MARK: Log records

    private func record(_ event: String) -> LogLine {
        var line = LogLine(event: event, connection: id, timestamp: loop.now)
        line.add("direction", endpoint.direction)
        line.add("listener", endpointName)
        line.add("peer_addr", peerAddress)
        line.add("app_addr", appAddress)
        line.add("peer_id", check.id?.description)
        line.add("trust_domain", check.id?.trustDomain.name)
        // Outbound, the entry is the rule: its `server_id` decides every event.
        if endpoint.isOutbound { line.add("rule", endpointName) } else { line.add("rule", decision?.rule) }
        line.add("tls_version", tlsVersion)
        line.add("cipher", cipher)
        line.add("cert_serial", check.serialHex)
        line.add("cert_sha256", check.sha256Hex)
        line.addTime("cert_not_after", epochSeconds: check.notAfter)
        return line
    }
}

private func connection(_ context: UnsafeMutableRawPointer?) -> Connection {
    Unmanaged<Connection>.fromOpaque(context!).takeUnretainedValue()
}

private let expiryCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).expiryFired()
}
private let timerCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).timerFired()
}

/// One open connection, as `GET /connections` reports it.
package struct ConnectionInfo: Sendable {
    package var id: UInt64
    package var direction: String
    package var listener: String
    package var peerID: String?
    package var peerAddress: String
    /// Outbound: the local app's address.
    package var appAddress: String?
    package var sinceEpochMilliseconds: Int64
    package var bytesIn: Int64
    package var bytesOut: Int64
    package var state: String
}
