internal import CLibevent
internal import COpenSSL
import Glibc
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

/// One client connection from accept to close: TLS handshake with SVID verification, the rule
/// decision, the upstream connect, then forwarding in both directions.
///
/// Runs on its worker's thread only. Owned by `Worker.connections`; C callbacks carry an
/// unretained pointer, valid because every callback source (bufferevents, timer) is freed in
/// `close` before the worker drops its reference.
final class Connection {
    enum State {
        case handshaking
        case connectingUpstream
        case forwarding
        case closed
    }

    /// Past this many bytes queued towards one side, stop reading from the other (backpressure).
    static let highWatermark = 256 * 1024
    /// Largest single read or write on either socket.
    static let maxSingleIO = 64 * 1024
    /// Resume reading once the queue drains below this.
    static let lowWatermark = 64 * 1024

    let id: UInt64
    unowned let worker: Worker
    let listenerIndex: Int
    let peerAddress: String
    let peerIP: IPAddress?
    let check = PeerCheck()
    /// The context this connection's session came from: kept alive while the session is, since
    /// its verify callback points into it even after a reload replaced it.
    private var tls: TLSServerContext?
    /// The generation the handshake started under.
    private var generation: UInt64 = 0
    private(set) var state = State.handshaking
    private var client: OpaquePointer?
    private var upstream: OpaquePointer?
    private var timer: OpaquePointer?
    /// Fires when the peer's SVID reaches notAfter (`peer_expiry: close`).
    private var expiryTimer: OpaquePointer?
    /// The verification key (bundle and limits) of the peer's trust domain its chain was last
    /// verified under; a reload that keeps it needs no new chain verification.
    private var verifiedUnder: String?
    /// The peer chain's fingerprint, computed at the first re-check that needs it, then kept.
    private var chainFingerprint: String?
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
    private var clientDone = false
    /// Reading from this side is stopped until the other side drains (backpressure).
    private var clientPaused = false
    private var upstreamPaused = false
    private var upstreamDone = false
    /// Who closed first; decides `close_cause` when the other side follows.
    private var firstCloser: CloseCause?
    private var closeReason: ReasonCode?
    private var closeDetail: String?

    init(id: UInt64, worker: Worker, listenerIndex: Int, peerAddress: String, peerIP: IPAddress?) {
        self.peerIP = peerIP
        self.id = id
        self.worker = worker
        self.listenerIndex = listenerIndex
        self.peerAddress = peerAddress
        self.acceptedAt = worker.nowMilliseconds
        self.lastActivity = acceptedAt
    }

    private var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
    private var listenerName: String { worker.snapshot.listeners[listenerIndex].name }

    func start(fd: Int32) {
        let tlsContext = worker.tls
        tls = tlsContext
        generation = worker.publication.generation
        let ssl = tlsContext.makeSession(check: check)
        guard let ssl,
            let bev = bufferevent_openssl_socket_new(
                worker.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue))
        else {
            if let ssl { SSL_free(ssl) }
            Glibc.close(fd)
            failHandshake(.tlsError, detail: "cannot allocate TLS session")
            return
        }
        client = bev
        // libevent reads at most 4 KiB at a time by default: one TLS record of 16 KiB per read
        // instead cuts syscalls and callbacks per byte by four (measured: docs/performance.md).
        bufferevent_set_max_single_read(bev, Self.maxSingleIO)
        bufferevent_set_max_single_write(bev, Self.maxSingleIO)
        bufferevent_setcb(bev, clientReadCallback, clientWriteCallback, clientEventCallback, context)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        timer = event_new(worker.base, -1, 0, timerCallback, context)
        var timeout = worker.handshakeTimeout
        event_add(timer, &timeout)
    }

    // MARK: Handshake and decision

    fileprivate func clientEvent(_ events: Int16) {
        let events = Int32(events)
        switch state {
        case .handshaking:
            if events & BEV_EVENT_CONNECTED != 0 {
                handshakeCompleted()
            } else {
                let (reason, detail) = handshakeFailure()
                failHandshake(reason, detail: detail)
            }
        case .connectingUpstream, .forwarding:
            if events & BEV_EVENT_EOF != 0 {
                clientFinished()
            } else if events & BEV_EVENT_ERROR != 0 {
                closeDetail = drainErrors().last ?? errnoText()
                close(cause: .error)
            }
        case .closed:
            break
        }
    }

    /// Names why a handshake failed: the SVID verdict if verification ran, else OpenSSL's reason.
    private func handshakeFailure() -> (ReasonCode, String?) {
        let errors = drainErrorCodes()
        if let reason = check.reason { return (reason, check.detail) }
        // Only an oversized Certificate is cert_too_large: OpenSSL says the same of any message.
        let readingCertificate =
            client.flatMap(bufferevent_openssl_get_ssl).map { SSL_get_state($0) == TLS_ST_SR_CERT }
            ?? false
        let detail = errors.last.map(OpenSSLError.text(of:))
        for code in errors {
            switch ERR_GET_REASON(code) {
            case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return (.noClientCert, detail)
            case SSL_R_UNSUPPORTED_PROTOCOL: return (.protocolVersion, detail)
            case SSL_R_EXCESSIVE_MESSAGE_SIZE where readingCertificate: return (.certTooLarge, detail)
            default: continue
            }
        }
        return (.tlsError, detail ?? (errors.isEmpty ? "connection closed during handshake" : nil))
    }

    private func handshakeCompleted() {
        if let client, let ssl = bufferevent_openssl_get_ssl(client), TLSServerContext.isResumed(ssl) {
            // No certificate this time: verify the one the ticket remembers, against today's bundles.
            generation = worker.publication.generation
            guard worker.tls.verifyPeer(of: ssl, into: check) else {
                failHandshake(check.reason ?? .untrustedChain, detail: check.detail)
                return
            }
        }
        guard let client, let ssl = bufferevent_openssl_get_ssl(client), let peer = check.id else {
            failHandshake(.tlsError, detail: "handshake completed without a verified SVID")
            return
        }
        if generation != worker.publication.generation {
            // A reload landed mid-handshake: the chain was checked against the old bundles.
            generation = worker.publication.generation
            if let (reason, detail) = worker.tls.reverifyPeer(of: ssl) {
                check.reason = reason
                failHandshake(reason, detail: detail)
                return
            }
        }
        verifiedUnder = worker.snapshot.verificationKeys[peer.trustDomain]
        tlsVersion = CText.optional(SSL_get_version(ssl))
        if let current = SSL_get_current_cipher(ssl) { cipher = CText.optional(SSL_CIPHER_get_name(current)) }
        let metrics = worker.metrics
        metrics.handshakeDuration(seconds: Double(monotonicMicroseconds() - acceptedAtMicroseconds) / 1e6)
        if let notAfter = check.notAfter {
            metrics.peerSVIDRemaining(seconds: Double(notAfter - Int64(worker.now.tv_sec)))
        }
        let decision = decide(peer)
        self.decision = decision
        if decision.isAllowed {
            metrics.connection(listener: listenerIndex, .allow)
            worker.log.append(record("allow").finish())
        } else {
            metrics.connection(listener: listenerIndex, decision.enforced ? .deny : .auditDeny)
            var line = record("deny")
            line.add("reason", ReasonCode.ruleDenied.rawValue)
            line.add("enforced", decision.enforced)
            worker.log.append(line.finish())
        }
        guard decision.letsThrough else {
            sendCloseNotifyAndRelease()
            return
        }
        counted = true
        metrics.active(listener: listenerIndex, 1)
        armExpiry()
        connectUpstream()
    }

    private func failHandshake(_ reason: ReasonCode, detail: String?) {
        worker.metrics.handshakeError(listener: listenerIndex, reason: reason.index)
        var line = record("handshake_error")
        line.add("reason", reason.rawValue)
        line.add("detail", detail)
        worker.logHandshakeError(line, source: peerIP, reason: reason)
        release()
    }

    private func decide(_ peer: SPIFFEID) -> Decision {
        let now = worker.now
        let context = DecisionContext(
            address: peerIP, minuteOfDay: Int(now.tv_sec % 86_400) / 60, svidLifetimeSeconds: check.lifetimeSeconds)
        return worker.snapshot.ruleSet.decide(peer: peer, listenerIndex: listenerIndex, context: context)
    }

    /// After a reload: is this peer still allowed under the new trust bundles and rules? If not,
    /// the connection is closed and logged as `revoke`, then `close` with `close_cause: revoked`.
    /// The chain is verified again only when its trust domain's bundle or the verification
    /// limits changed; the rules are always decided again (a lookup).
    func recheck() {
        guard state == .connectingUpstream || state == .forwarding, let client,
            generation != worker.publication.generation,
            let ssl = bufferevent_openssl_get_ssl(client), let peer = check.id
        else { return }
        generation = worker.publication.generation
        let key = worker.snapshot.verificationKeys[peer.trustDomain]
        if key != verifiedUnder {
            let fingerprint = chainFingerprint ?? TLSServerContext.peerChainFingerprint(of: ssl) ?? ""
            chainFingerprint = fingerprint
            let verdict: (ReasonCode, String?)?
            if let known = worker.chainVerdicts[fingerprint] {
                verdict = known
            } else {
                verdict = worker.tls.reverifyPeer(of: ssl)
                worker.chainVerdicts[fingerprint] = .some(verdict)
            }
            if let (reason, detail) = verdict {
                revoke(reason: reason, detail: detail, decision: nil)
                return
            }
            verifiedUnder = key
        }
        let decision = decide(peer)
        if !decision.letsThrough {
            revoke(reason: .ruleDenied, detail: nil, decision: decision)
            return
        }
        armExpiry()
    }

    /// With `peer_expiry: close`, a timer for the moment the peer's SVID expires: a connection
    /// must not outlive the identity that opened it.
    /// When the peer's authentication ends: the earliest notAfter of its verified chain.
    private var authenticatedUntil: Int64? { check.validUntil ?? check.notAfter }

    private func armExpiry() {
        guard worker.snapshot.config.peerExpiry == .close, let notAfter = authenticatedUntil else {
            if let expiryTimer { event_del(expiryTimer) }
            return
        }
        if expiryTimer == nil { expiryTimer = event_new(worker.base, -1, 0, expiryCallback, context) }
        let remaining = max(0, notAfter - Int64(worker.now.tv_sec))
        var wait = timeval(tv_sec: Int(remaining), tv_usec: 0)
        event_add(expiryTimer, &wait)
    }

    fileprivate func expiryFired() {
        guard state == .connectingUpstream || state == .forwarding, let notAfter = authenticatedUntil else { return }
        // A wall clock stepped back since arming: wait for the rest.
        if Int64(worker.now.tv_sec) < notAfter {
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
        worker.log.append(line.finish())
        closeReason = reason
        close(cause: .revoked)
    }

    // MARK: Upstream

    private func connectUpstream() {
        state = .connectingUpstream
        // Hold client bytes until there is somewhere to put them.
        bufferevent_disable(client, Int16(EV_READ))
        let target = worker.snapshot.listeners[listenerIndex].upstream
        let fd = socket(
            target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0
        )
        guard fd >= 0, let bev = bufferevent_socket_new(worker.base, fd, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue)) else {
            if fd >= 0 { Glibc.close(fd) }
            upstreamFailed(detail: errnoText())
            return
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        upstream = bev
        bufferevent_set_max_single_read(bev, Self.maxSingleIO)
        bufferevent_set_max_single_write(bev, Self.maxSingleIO)
        bufferevent_setcb(bev, upstreamReadCallback, upstreamWriteCallback, upstreamEventCallback, context)
        var connectTimeout = worker.upstreamConnectTimeout
        bufferevent_set_timeouts(bev, nil, &connectTimeout)
        let started = target.withSockaddr { address, length in
            bufferevent_socket_connect(bev, UnsafeMutablePointer(mutating: address), Int32(length))
        }
        if started != 0 { upstreamFailed(detail: errnoText()) }
    }

    fileprivate func upstreamEvent(_ events: Int16) {
        let events = Int32(events)
        switch state {
        case .connectingUpstream:
            if events & BEV_EVENT_CONNECTED != 0 {
                upstreamConnected()
            } else {
                upstreamFailed(detail: events & BEV_EVENT_TIMEOUT != 0 ? "connect timed out" : errnoText())
            }
        case .forwarding:
            if events & BEV_EVENT_EOF != 0 {
                upstreamFinished()
            } else if events & BEV_EVENT_ERROR != 0 {
                closeDetail = errnoText()
                close(cause: .error)
            }
        case .handshaking, .closed:
            break
        }
    }

    private func upstreamFailed(detail: String) {
        closeReason = .upstreamUnreachable
        closeDetail = detail
        close(cause: .error)
    }

    private func upstreamConnected() {
        state = .forwarding
        bufferevent_set_timeouts(upstream, nil, nil)
        bufferevent_setwatermark(upstream, Int16(EV_WRITE), Self.lowWatermark, 0)
        bufferevent_setwatermark(client, Int16(EV_WRITE), Self.lowWatermark, 0)
        bufferevent_enable(upstream, Int16(EV_READ | EV_WRITE))
        lastActivity = worker.nowMilliseconds
        event_del(timer)
        var idle = timeval(
            tv_sec: Int(worker.idleTimeoutMilliseconds / 1000),
            tv_usec: Int(worker.idleTimeoutMilliseconds % 1000) * 1000)
        event_add(timer, &idle)
        if clientDone {
            // The client sent its request and closed its side before the upstream answered.
            forward(from: client, to: upstream, toUpstream: true)
            shutDownUpstreamWriteIfDrained()
        } else {
            bufferevent_enable(client, Int16(EV_READ))
            forward(from: client, to: upstream, toUpstream: true)
        }
    }

    // MARK: Forwarding

    fileprivate func clientReadable() {
        guard state == .forwarding else { return }
        forward(from: client, to: upstream, toUpstream: true)
    }

    fileprivate func upstreamReadable() {
        guard state == .forwarding else { return }
        readAhead(from: upstream)
        forward(from: upstream, to: client, toUpstream: false)
    }

    /// libevent 2.1 reads a plain socket 4 KiB at a time, so the TLS side would send 4 KiB
    /// records, a write each. Read what else the socket holds straight into the same evbuffer
    /// (reserve and commit: no copy through Swift) so records go out at their full 16 KiB.
    private func readAhead(from bev: OpaquePointer?) {
        guard let bev, let input = bufferevent_get_input(bev) else { return }
        let buffered = evbuffer_get_length(input)
        guard buffered >= 4096, buffered < Self.maxSingleIO else { return }
        // A bufferevent keeps its input's end frozen except while it reads itself; thaw it for
        // this one read. evbuffer_iovec is struct iovec on POSIX systems.
        evbuffer_unfreeze(input, 0)
        defer { evbuffer_freeze(input, 0) }
        var vectors = (iovec(), iovec())
        withUnsafeMutablePointer(to: &vectors) { pair in
            pair.withMemoryRebound(to: iovec.self, capacity: 2) { iov in
                let count = evbuffer_reserve_space(input, Self.maxSingleIO - buffered, iov, 2)
                guard count > 0 else { return }
                let got = readv(bufferevent_getfd(bev), iov, count)
                guard got > 0 else {
                    evbuffer_commit_space(input, iov, 0)
                    return
                }
                // Shrink the reserved vectors to what was read, then commit them.
                var remaining = got
                var used: Int32 = 0
                for index in 0..<Int(count) where remaining > 0 {
                    iov[index].iov_len = min(iov[index].iov_len, remaining)
                    remaining -= iov[index].iov_len
                    used += 1
                }
                evbuffer_commit_space(input, iov, used)
            }
        }
    }

    /// Moves every buffered byte from `source` to `target` without copying it through Swift.
    private func forward(from source: OpaquePointer?, to target: OpaquePointer?, toUpstream: Bool) {
        let input = bufferevent_get_input(source)
        let output = bufferevent_get_output(target)
        let count = Int64(evbuffer_get_length(input))
        guard count > 0 else { return }
        evbuffer_add_buffer(output, input)
        if toUpstream { bytesIn += count } else { bytesOut += count }
        worker.metrics.bytes(listener: listenerIndex, toUpstream ? .incoming : .outgoing, count)
        lastActivity = worker.nowMilliseconds
        if evbuffer_get_length(output) >= Self.highWatermark {
            bufferevent_disable(source, Int16(EV_READ))
            if toUpstream { clientPaused = true } else { upstreamPaused = true }
        }
    }

    /// The target drained below the low watermark: resume its source, finish a half-close.
    fileprivate func drained(toUpstream: Bool) {
        guard state == .forwarding else { return }
        if toUpstream {
            if clientDone {
                shutDownUpstreamWriteIfDrained()
            } else if clientPaused {
                clientPaused = false
                bufferevent_enable(client, Int16(EV_READ))
            }
        } else {
            if upstreamDone {
                closeIfClientDrained()
            } else if upstreamPaused {
                upstreamPaused = false
                bufferevent_enable(upstream, Int16(EV_READ))
            }
        }
    }

    /// The client finished sending (close_notify or FIN): pass its last bytes on, then half-close
    /// the upstream so the service sees end-of-request and can still answer.
    private func clientFinished() {
        clientDone = true
        if firstCloser == nil { firstCloser = .client }
        // libevent stops writing on the TLS side at EOF; the response still has to go out.
        bufferevent_enable(client, Int16(EV_WRITE))
        guard state == .forwarding else { return }
        forward(from: client, to: upstream, toUpstream: true)
        if upstreamDone { closeIfClientDrained() } else { shutDownUpstreamWriteIfDrained() }
    }

    private func shutDownUpstreamWriteIfDrained() {
        guard let upstream, evbuffer_get_length(bufferevent_get_output(upstream)) == 0 else { return }
        shutdown(bufferevent_getfd(upstream), Int32(SHUT_WR))
    }

    /// The upstream finished: deliver what it sent, then close the client with close_notify.
    private func upstreamFinished() {
        upstreamDone = true
        if firstCloser == nil { firstCloser = .upstream }
        forward(from: upstream, to: client, toUpstream: false)
        closeIfClientDrained()
    }

    private func closeIfClientDrained() {
        guard let client, evbuffer_get_length(bufferevent_get_output(client)) == 0 else { return }
        close(cause: firstCloser ?? .upstream)
    }

    // MARK: Timers

    fileprivate func timerFired() {
        switch state {
        case .handshaking:
            failHandshake(.handshakeTimeout, detail: nil)
        case .forwarding:
            let idle = worker.nowMilliseconds - lastActivity
            if idle >= worker.idleTimeoutMilliseconds {
                close(cause: .idleTimeout)
            } else {
                let remaining = worker.idleTimeoutMilliseconds - idle
                var wait = timeval(tv_sec: Int(remaining / 1000), tv_usec: Int(remaining % 1000) * 1000)
                event_add(timer, &wait)
            }
        case .connectingUpstream, .closed:
            break
        }
    }

    // MARK: Closing

    /// Ends an allowed connection: logs `close`, sends close_notify, frees everything.
    func close(cause: CloseCause) {
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
        line.add("duration_ms", worker.nowMilliseconds - acceptedAt)
        line.add("close_cause", cause.rawValue)
        worker.log.append(line.finish())
        if counted { worker.metrics.active(listener: listenerIndex, -1) }
        if cause == .revoked { worker.metrics.revoked() }
        sendCloseNotifyAndRelease()
    }

    private func sendCloseNotifyAndRelease() {
        if let client, let ssl = bufferevent_openssl_get_ssl(client) {
            // bufferevent_free does not send close_notify; a clean TLS close needs it.
            SSL_shutdown(ssl)
            ERR_clear_error()
        }
        release()
    }

    /// Frees every callback source, then drops the worker's reference: the one release point.
    private func release() {
        state = .closed
        worker.load.release(listenerIndex)
        if let timer { event_free(timer) }
        timer = nil
        if let expiryTimer { event_free(expiryTimer) }
        expiryTimer = nil
        if let client { bufferevent_free(client) }
        client = nil
        if let upstream { bufferevent_free(upstream) }
        upstream = nil
        worker.connections[id] = nil
    }

    /// What `GET /connections` shows; built on the worker thread.
    var info: ConnectionInfo {
        ConnectionInfo(
            id: id, listener: listenerName, peerID: check.id?.description, peerAddress: peerAddress,
            sinceEpochMilliseconds: acceptedAt, bytesIn: bytesIn, bytesOut: bytesOut,
            state: "\(state)")
    }

    // MARK: Log records

    private func record(_ event: String) -> LogLine {
        var line = LogLine(event: event, connection: id, timestamp: worker.now)
        line.add("listener", listenerName)
        line.add("peer_addr", peerAddress)
        line.add("peer_id", check.id?.description)
        line.add("trust_domain", check.id?.trustDomain.name)
        line.add("rule", decision?.rule)
        line.add("tls_version", tlsVersion)
        line.add("cipher", cipher)
        line.add("cert_serial", check.serialHex)
        line.add("cert_sha256", check.sha256Hex)
        line.addTime("cert_not_after", epochSeconds: check.notAfter)
        return line
    }

    private func drainErrorCodes() -> [UInt] {
        var codes: [UInt] = []
        guard let client else { return codes }
        while true {
            let code = bufferevent_get_openssl_error(client)
            if code == 0 { break }
            // libevent also queues its own SSL_get_error codes, which carry no library.
            if ERR_GET_LIB(code) != 0 { codes.append(code) }
        }
        ERR_clear_error()
        return codes
    }

    private func drainErrors() -> [String] {
        drainErrorCodes().map(OpenSSLError.text(of:))
    }

    private func errnoText() -> String {
        let code = errno
        return code == 0 ? "connection failed" : CText.errno(code)
    }
}

private func connection(_ context: UnsafeMutableRawPointer?) -> Connection {
    Unmanaged<Connection>.fromOpaque(context!).takeUnretainedValue()
}

private let clientReadCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    connection($1).clientReadable()
}
private let upstreamReadCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    connection($1).upstreamReadable()
}
private let clientWriteCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    connection($1).drained(toUpstream: false)
}
private let upstreamWriteCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    connection($1).drained(toUpstream: true)
}
private let clientEventCallback: @convention(c) (OpaquePointer?, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).clientEvent($1)
}
private let upstreamEventCallback: @convention(c) (OpaquePointer?, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).upstreamEvent($1)
}
private let expiryCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).expiryFired()
}
private let timerCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    connection($2).timerFired()
}

/// CLOCK_MONOTONIC in microseconds (vDSO: no system call).
package func monotonicMicroseconds() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Int64(time.tv_sec) * 1_000_000 + Int64(time.tv_nsec) / 1000
}

/// One open connection, as `GET /connections` reports it.
package struct ConnectionInfo: Sendable {
    package var id: UInt64
    package var listener: String
    package var peerID: String?
    package var peerAddress: String
    package var sinceEpochMilliseconds: Int64
    package var bytesIn: Int64
    package var bytesOut: Int64
    package var state: String
}
