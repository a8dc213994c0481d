internal import CLibevent
import Glibc
import WardIO
import WardIdentity
import WardObservability
import WardPolicy
import WardTLS

/// What a worker's connections share: the publication the loop serves, its scratch buffers, its
/// log queue, counters and clock. One per worker; loop thread only (after start).
final class LoopState {
    let workerIndex: Int
    let base: OpaquePointer
    let store: SnapshotStore
    /// The generation this loop serves; replaced on the loop thread only (`Worker.adoptLatest`).
    var publication: Publication
    let log: LogQueue
    let metrics: WorkerMetrics
    /// Open connections per listener across all workers, for `max_connections`.
    let load: ListenerLoad
    let buffers = LoopBuffers()
    let lingering: Lingering
    /// The owner of every open connection: removal is each connection's one release point.
    var connections: [UInt64: Connection] = [:]
    /// Chain verdicts of the current re-check pass by peer chain fingerprint (nil: still valid):
    /// connections presenting the same chain, as the replicas of one workload do, are verified
    /// once per publication instead of once each.
    var chainVerdicts: [String: (ReasonCode, String?)?] = [:]
    /// Bounds `handshake_error` lines per source, one budget per direction: a target's refusals
    /// must not use up the lines of clients calling from the same address. `throttleEvent`
    /// writes the summaries.
    private var throttles = (inbound: LogThrottle(), outbound: LogThrottle())
    private var throttleEvent: OpaquePointer?

    init(
        workerIndex: Int, base: OpaquePointer, store: SnapshotStore, log: LogQueue, metrics: WorkerMetrics,
        load: ListenerLoad
    ) {
        self.workerIndex = workerIndex
        self.base = base
        self.store = store
        self.publication = store.load()
        self.log = log
        self.metrics = metrics
        self.load = load
        self.lingering = Lingering(base: base)
        throttleEvent = event_new(base, -1, 0, throttleCallback, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Frees this state's events; the worker calls it before freeing their base.
    func freeEvents() {
        for connection in Array(connections.values) { connection.close(cause: .shutdown) }
        lingering.closeAll()
        if let throttleEvent { event_free(throttleEvent) }
        throttleEvent = nil
    }

    var snapshot: RuntimeSnapshot { publication.snapshot }
    var tls: TLSServerContext { publication.contexts[workerIndex].server }
    var clientTLS: TLSClientContext? { publication.contexts[workerIndex].client }

    /// The context that verifies `endpoint`'s peers: clients for a listener, servers for an
    /// outbound entry (there is a client context whenever there are outbound entries).
    func tls(for endpoint: Endpoint) -> TLSContext {
        endpoint.isOutbound ? clientTLS ?? tls : tls
    }
    var generation: UInt64 { publication.generation }

    /// An endpoint's slot in the counters and `ListenerLoad`: listeners first, then outbound
    /// entries (both fixed for the process's life: changing either needs a restart).
    func slot(of endpoint: Endpoint) -> Int {
        switch endpoint {
        case .listener(let index): return index
        case .outbound(let index): return snapshot.listeners.count + index
        }
    }

    func endpoint(ofSlot slot: Int) -> Endpoint {
        slot < snapshot.listeners.count ? .listener(slot) : .outbound(slot - snapshot.listeners.count)
    }

    func name(of endpoint: Endpoint) -> String {
        switch endpoint {
        case .listener(let index): return snapshot.listeners[index].name
        case .outbound(let index): return snapshot.outbound[index].name
        }
    }
    var handshakeTimeout: timeval { timeval(duration: snapshot.config.handshakeTimeout) }
    var idleTimeoutMilliseconds: Int64 { snapshot.config.idleTimeout.milliseconds }
    var upstreamConnectTimeout: timeval { timeval(duration: snapshot.config.upstreamConnectTimeout) }

    /// The loop's cached clock, in milliseconds; no system call.
    var nowMilliseconds: Int64 {
        let time = now
        return Int64(time.tv_sec) * 1000 + Int64(time.tv_usec) / 1000
    }

    var now: timeval {
        var time = timeval()
        event_base_gettimeofday_cached(base, &time)
        return time
    }

    /// Writes a `handshake_error` line unless its source has used up its lines for now; those
    /// it has not are summed into a `handshake_error_suppressed` line after the window.
    func logHandshakeError(_ line: LogLine, source: IPAddress?, reason: ReasonCode, outbound: Bool) {
        let admitted =
            outbound
            ? throttles.outbound.admit(source, reason: reason.rawValue, now: nowMilliseconds)
            : throttles.inbound.admit(source, reason: reason.rawValue, now: nowMilliseconds)
        if admitted { log.append(line.finish(), essential: false) }
        if event_pending(throttleEvent, Int16(EV_TIMEOUT), nil) == 0 { armThrottle() }
    }

    private func armThrottle() {
        var window = timeval(tv_sec: 0, tv_usec: Int(throttles.inbound.windowMilliseconds) * 1000)
        event_add(throttleEvent, &window)
    }

    fileprivate func flushThrottle() {
        let drained = [
            ("inbound", throttles.inbound.drain(now: nowMilliseconds)),
            ("outbound", throttles.outbound.drain(now: nowMilliseconds)),
        ]
        for (direction, reports) in drained {
            for report in reports {
                var line = LogLine(event: "handshake_error_suppressed", connection: nil, timestamp: now)
                line.add("direction", direction)
                line.add("peer_ip", report.source?.description ?? "*")
                line.add("suppressed", Int64(report.count))
                line.add("window_ms", throttles.inbound.windowMilliseconds)
                line.addCounts("reasons", report.reasons)
                log.append(line.finish())
            }
        }
        if !throttles.inbound.isEmpty || !throttles.outbound.isEmpty { armThrottle() }
    }
}

private let throttleCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<LoopState>.fromOpaque(context).takeUnretainedValue().flushThrottle()
}
