internal import CLibevent
import Foundation
import Glibc
import Logging
import Synchronization
import WardIO
import WardIdentity
import WardObservability
import WardPolicy
import WardSystem
import WardTLS

/// Connection ids are unique within the process; one atomic add per accepted connection.
let connectionIDs = Atomic<UInt64>(0)

/// One event loop on one thread, with its own listeners (SO_REUSEPORT), TLS context and
/// connections. Everything here runs on the worker's thread except `start` and `requestStop`.
package final class Worker: @unchecked Sendable {
    // @unchecked: after `start`, all state is touched only on the worker thread; the one
    // cross-thread call, `requestStop`, goes through `event_active`, which libevent makes
    // thread-safe once `evthread_use_pthreads` ran.
    let index: Int
    let base: OpaquePointer
    let store: SnapshotStore
    let logger: Logger
    /// What this worker's connections share (publication, buffers, log queue, counters).
    let loop: LoopState
    var snapshot: RuntimeSnapshot { loop.snapshot }
    var metrics: WorkerMetrics { loop.metrics }
    private var listeners: [OpaquePointer] = []
    private var stopEvent: OpaquePointer?
    private let stopped = DispatchSemaphore(value: 0)
    private var closeListenersEvent: OpaquePointer?
    private var reloadEvent: OpaquePointer?
    private var taskEvent: OpaquePointer?
    /// Fires with a zero timeout to run the next re-check slice after pending I/O.
    private var recheckEvent: OpaquePointer?
    /// Connections still to re-check against the current publication.
    private var recheckQueue: [UInt64] = []
    /// Work other threads hand to this loop (admin queries); drained by `taskEvent`. Once the
    /// loop has stopped, `accepting` is false and no task is queued, so nobody waits forever.
    private let tasks = Mutex<(queue: [@Sendable () -> Void], accepting: Bool)>(([], true))
    private let running = Atomic<Bool>(false)
    private let listenersClosed = DispatchSemaphore(value: 0)

    package init(
        index: Int, store: SnapshotStore, sockets: [Int32], log: ConnectionLog, metrics: WorkerMetrics,
        load: ListenerLoad, logger: Logger
    ) throws {
        guard let base = event_base_new() else { throw WorkerError(message: "event_base_new failed") }
        self.index = index
        self.base = base
        self.store = store
        self.logger = logger
        self.loop = LoopState(
            workerIndex: index, base: base, store: store, log: log.makeQueue(), metrics: metrics, load: load)
        let context = Unmanaged.passUnretained(self).toOpaque()
        for (slot, fd) in sockets.enumerated() {
            // The listener context packs the worker and the socket's slot; the worker outlives it.
            let box = ListenerContext(worker: self, slot: slot)
            listenerContexts.append(box)
            guard
                let listener = evconnlistener_new(
                    base, acceptCallback, Unmanaged.passUnretained(box).toOpaque(),
                    UInt32(LEV_OPT_CLOSE_ON_FREE), 0, fd)
            else { throw WorkerError(message: "evconnlistener_new failed") }
            evconnlistener_set_error_cb(listener, acceptErrorCallback)
            listeners.append(listener)
        }
        stopEvent = event_new(base, -1, Int16(EV_PERSIST), stopCallback, context)
        reloadEvent = event_new(base, -1, Int16(EV_PERSIST), reloadCallback, context)
        taskEvent = event_new(base, -1, Int16(EV_PERSIST), taskCallback, context)
        closeListenersEvent = event_new(base, -1, Int16(EV_PERSIST), closeListenersCallback, context)
        recheckEvent = event_new(base, -1, 0, recheckCallback, context)
    }

    private var listenerContexts: [ListenerContext] = []

    deinit {
        if let stopEvent { event_free(stopEvent) }
        if let reloadEvent { event_free(reloadEvent) }
        if let taskEvent { event_free(taskEvent) }
        if let closeListenersEvent { event_free(closeListenersEvent) }
        if let recheckEvent { event_free(recheckEvent) }
        // The loop state's events (connections, throttle, lingering sockets) go before their base.
        loop.freeEvents()
        event_base_free(base)
    }

    package func start() {
        running.store(true, ordering: .releasing)
        let thread = Thread { [self] in
            event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY)
            running.store(false, ordering: .releasing)
            runTasks(final: true)  // nobody waits forever on a stopped loop
            stopped.signal()
        }
        thread.name = "ward-worker-\(index)"
        thread.start()
    }

    /// Asks the loop to stop (from any thread) and waits until it has.
    package func stopAndWait() {
        event_active(stopEvent, EV_READ, 0)
        stopped.wait()
    }

    /// Frees this worker's listeners (from any thread) and waits until it has. Shutdown calls
    /// it on every worker before stopping any, so no open listener is left without a loop.
    package func closeListenersAndWait() {
        event_active(closeListenersEvent, EV_READ, 0)
        listenersClosed.wait()
    }

    fileprivate func closeListeners() {
        for listener in listeners { evconnlistener_free(listener) }
        listeners.removeAll()
        listenersClosed.signal()
    }

    /// On the worker thread: close every connection cleanly (close_notify), then leave the loop.
    fileprivate func shutDown() {
        for listener in listeners { evconnlistener_free(listener) }
        listeners.removeAll()
        for connection in Array(loop.connections.values) { connection.close(cause: .shutdown) }
        loop.lingering.closeAll()
        event_base_loopexit(base, nil)
    }

    /// What `GET /connections` shows of this worker's connections. Worker thread only.
    package var connectionInfos: [ConnectionInfo] { loop.connections.values.map(\.info) }

    /// Whether the loop is running (for `/healthz`).
    package var isRunning: Bool { running.load(ordering: .acquiring) }

    /// Runs `body` on the worker's thread and returns its result; blocks the caller until then.
    /// For the admin thread only, never from a data-plane loop.
    package func onLoop<T: Sendable>(_ body: @escaping @Sendable (Worker) -> T) -> T? {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<T?>(nil)
        // Checked and queued under one lock: the loop's exit drains under the same lock, so a
        // task is either run by the loop or refused here, never stranded.
        let queued = tasks.withLock { tasks -> Bool in
            guard tasks.accepting else { return false }
            tasks.queue.append { [unowned self] in
                let value = body(self)
                result.withLock { $0 = value }
                done.signal()
            }
            return true
        }
        guard queued else { return nil }
        event_active(taskEvent, EV_READ, 0)
        done.wait()
        return result.withLock { $0 }
    }

    fileprivate func runTasks(final: Bool = false) {
        let pending = tasks.withLock { tasks in
            defer { tasks.queue = [] }
            if final { tasks.accepting = false }
            return tasks.queue
        }
        for task in pending { task() }
    }

    /// Wakes the worker to adopt a new generation and re-check its open connections. Any thread.
    package func notifyPublished() {
        event_active(reloadEvent, EV_READ, 0)
    }

    /// Takes the newest publication if there is one, and then re-checks every open connection
    /// against it, whatever called: an accept that adopts first must not skip the re-check.
    /// One atomic load when nothing was published.
    func adoptLatest() {
        guard store.generation != loop.generation else { return }
        loop.publication = store.load()
        loop.chainVerdicts = [:]
        // Connections decided under this generation skip themselves, so queueing all is safe.
        recheckQueue = Array(loop.connections.keys)
        runRecheckSlice()
    }

    /// Longest a re-check slice may hold the loop before yielding to I/O.
    static let recheckSliceMicroseconds: Int64 = 2000

    /// Re-checks queued connections for up to `recheckSliceMicroseconds`, then yields to the
    /// loop and continues: a reload never stalls forwarding for long, however many are open.
    fileprivate func runRecheckSlice() {
        let deadline = monotonicMicroseconds() + Self.recheckSliceMicroseconds
        // A chain verification costs about 150 µs: the clock (vDSO) is read after each one.
        while let id = recheckQueue.popLast() {
            loop.connections[id]?.recheck()
            if monotonicMicroseconds() >= deadline { break }
        }
        if !recheckQueue.isEmpty {
            var now = timeval()
            event_add(recheckEvent, &now)
        }
    }

    /// `slot`: the listening socket's place, listeners first, then outbound entries.
    fileprivate func accept(fd: Int32, address: UnsafeMutablePointer<sockaddr>, length: Int32, slot: Int) {
        adoptLatest()
        let endpoint = loop.endpoint(ofSlot: slot)
        guard loop.load.acquire(slot, limit: snapshot.config.maxConnections) else {
            refuseFull(fd: fd, address: address, length: length, endpoint: endpoint)
            return
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let id = connectionIDs.wrappingAdd(1, ordering: .relaxed).newValue
        let caller = SocketAddress(address, length: socklen_t(length))
        let connection: Connection
        switch endpoint {
        case .listener:
            connection = Connection(
                id: id, loop: loop, endpoint: endpoint, peerAddress: caller.description, peerIP: caller.ipAddress)
        case .outbound(let index):
            // The TLS peer is the target; the caller is the local app.
            let target = snapshot.outbound[index].target
            connection = Connection(
                id: id, loop: loop, endpoint: endpoint, peerAddress: target.description, peerIP: target.ipAddress,
                appAddress: caller.description)
        }
        loop.connections[id] = connection
        connection.start(fd: fd)
    }

    /// Accept failed (EMFILE, ENFILE, ENOMEM, ...): the pending connection stays queued, so a
    /// level-triggered listener would spin. Pause this listener and retry shortly.
    fileprivate func pauseAccepting(_ box: ListenerContext, error: Int32) {
        guard box.slot < listeners.count else { return }
        evconnlistener_disable(listeners[box.slot])
        metrics.pausedListeners(1)
        writeDiagnostic(
            "ward: worker \(index) listener \(loop.name(of: loop.endpoint(ofSlot: box.slot))): accept failed: "
                + "\(CText.errno(error)); pausing accepts for 100ms\n")
        var pause = Self.acceptRetryDelay
        event_base_once(
            base, -1, Int16(EV_TIMEOUT), resumeAcceptingCallback, Unmanaged.passUnretained(box).toOpaque(), &pause)
    }

    fileprivate func resumeAccepting(_ box: ListenerContext) {
        // After shutdown the listeners are gone; nothing to resume.
        guard box.slot < listeners.count else { return }
        evconnlistener_enable(listeners[box.slot])
        metrics.pausedListeners(-1)
    }

    static let acceptRetryDelay = timeval(tv_sec: 0, tv_usec: 100_000)

    /// `max_connections` reached: close at once (no TLS work), log and count it.
    private func refuseFull(fd: Int32, address: UnsafeMutablePointer<sockaddr>, length: Int32, endpoint: Endpoint) {
        // An RST rather than a FIN: the client learns at once, and no TIME_WAIT is left here.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        Glibc.close(fd)
        metrics.handshakeError(listener: loop.slot(of: endpoint), reason: ReasonCode.listenerFull.index)
        let id = connectionIDs.wrappingAdd(1, ordering: .relaxed).newValue
        let peer = SocketAddress(address, length: socklen_t(length))
        var line = LogLine(event: "handshake_error", connection: id, timestamp: loop.now)
        line.add("direction", endpoint.direction)
        line.add("listener", loop.name(of: endpoint))
        if case .outbound(let index) = endpoint {
            // The caller is the local app; the peer would have been the target.
            line.add("peer_addr", snapshot.outbound[index].target.description)
            line.add("app_addr", peer.description)
            line.add("rule", loop.name(of: endpoint))
        } else {
            line.add("peer_addr", peer.description)
        }
        line.add("reason", ReasonCode.listenerFull.rawValue)
        line.add("detail", "max_connections (\(snapshot.config.maxConnections)) reached")
        loop.logHandshakeError(line, source: peer.ipAddress, reason: .listenerFull, outbound: endpoint.isOutbound)
    }
}

package final class ListenerContext {
    unowned let worker: Worker
    /// The listening socket's place: listeners first, then outbound entries (`LoopState.slot`).
    let slot: Int
    package init(worker: Worker, slot: Int) {
        self.worker = worker
        self.slot = slot
    }
}

package struct WorkerError: Error, CustomStringConvertible {
    var message: String
    package init(message: String) { self.message = message }
    package var description: String { message }
}

private let acceptCallback:
    @convention(c) (OpaquePointer?, Int32, UnsafeMutablePointer<sockaddr>?, Int32, UnsafeMutableRawPointer?)
        -> Void = { _, fd, address, length, context in
            guard let context, let address else { return }
            let box = Unmanaged<ListenerContext>.fromOpaque(context).takeUnretainedValue()
            box.worker.accept(fd: fd, address: address, length: length, slot: box.slot)
        }

private let acceptErrorCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    _, context in
    guard let context else { return }
    let box = Unmanaged<ListenerContext>.fromOpaque(context).takeUnretainedValue()
    box.worker.pauseAccepting(box, error: errno)
}

private let resumeAcceptingCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    let box = Unmanaged<ListenerContext>.fromOpaque(context).takeUnretainedValue()
    box.worker.resumeAccepting(box)
}

private let closeListenersCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<Worker>.fromOpaque(context).takeUnretainedValue().closeListeners()
}

private let taskCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<Worker>.fromOpaque(context).takeUnretainedValue().runTasks()
}

private let reloadCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<Worker>.fromOpaque(context).takeUnretainedValue().adoptLatest()
}

private let recheckCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<Worker>.fromOpaque(context).takeUnretainedValue().runRecheckSlice()
}

private let stopCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<Worker>.fromOpaque(context).takeUnretainedValue().shutDown()
}

extension timeval {
    package init(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
