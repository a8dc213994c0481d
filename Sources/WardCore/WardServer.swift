internal import CLibevent
import Foundation
import Glibc
import Logging

/// Runs Ward: binds every listener, starts the workers, and waits for SIGTERM or SIGINT.
///
/// `run` blocks the calling thread until shutdown is complete.
public final class WardServer {
    private let snapshot: RuntimeSnapshot
    private let logger: Logger

    public init(snapshot: RuntimeSnapshot, logger: Logger) {
        self.snapshot = snapshot
        self.logger = logger
    }

    public var workerCount: Int {
        snapshot.config.workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Starts serving; returns after a clean shutdown. Throws start-up failures (ports, log).
    public func run() throws {
        // Before any event_base exists, or cross-thread wakeups silently fail (PLATFORM.md).
        evthread_use_pthreads()
        signal(SIGPIPE, SIG_IGN)

        let log = try ConnectionLog(path: snapshot.config.logPath)
        var sockets: [[Int32]] = []
        do {
            for listener in snapshot.listeners { try ListenerSocket.checkAvailable(listener.listen) }
            for _ in 0..<workerCount {
                sockets.append(try snapshot.listeners.map { try ListenerSocket.bind($0.listen) })
            }
        } catch {
            for fd in sockets.joined() { Glibc.close(fd) }
            log.close()
            throw error
        }

        var workers: [Worker] = []
        for (index, workerSockets) in sockets.enumerated() {
            workers.append(
                try Worker(index: index, snapshot: snapshot, sockets: workerSockets, log: log, logger: logger))
        }
        for worker in workers { worker.start() }

        let listening = snapshot.listeners.map { "\($0.name)=\($0.listen)->\($0.upstream)" }.joined(separator: " ")
        logger.info("ready: \(listening) workers=\(workers.count) id=\(snapshot.ownID)")

        waitForTerminationSignal()
        logger.info("shutting down: closing listeners, then connections")
        for worker in workers { worker.closeListenersAndWait() }
        for worker in workers { worker.stopAndWait() }
        log.close()
        logger.info("stopped")
    }

    /// Blocks until SIGTERM or SIGINT, on a small event loop of the main thread.
    private func waitForTerminationSignal() {
        guard let base = event_base_new() else { return }
        defer { event_base_free(base) }
        let signals = [SIGTERM, SIGINT].compactMap { signal in
            event_new(base, signal, Int16(EV_SIGNAL | EV_PERSIST), signalCallback, UnsafeMutableRawPointer(base))
        }
        for event in signals { event_add(event, nil) }
        event_base_dispatch(base)
        for event in signals { event_free(event) }
    }
}

private let signalCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, base in
    event_base_loopbreak(OpaquePointer(base))
}
