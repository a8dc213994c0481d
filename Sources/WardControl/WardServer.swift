internal import CLibevent
import Foundation
import Glibc
import Logging
import WardConfig
import WardCore
import WardIdentity
import WardObservability

/// Runs Ward: binds every listener, starts the workers, then serves the control loop on the
/// calling thread: SIGTERM/SIGINT stop, SIGHUP reloads, the admin endpoint, the file watcher.
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

    /// Starts serving; returns after a clean shutdown. Throws start-up failures (ports, log, admin).
    public func run() throws {
        // Before any event_base exists, or cross-thread wakeups silently fail.
        evthread_use_pthreads()
        signal(SIGPIPE, SIG_IGN)
        try FilePolicy.check(snapshot.config)
        for warning in FilePolicy.warnings(snapshot) { logger.warning("\(warning)") }

        let sealer = LogSealer(identity: snapshot.identity, id: snapshot.ownID)
        let log = try ConnectionLog(
            path: snapshot.config.logPath, chain: snapshot.config.logChain,
            checkpoints: .init(
                everyLines: snapshot.config.logCheckpointLines, interval: snapshot.config.logCheckpointInterval,
                sealer: sealer))
        let metrics = MetricsRegistry(
            listenerNames: snapshot.listeners.map(\.name), outboundNames: snapshot.outbound.map(\.name),
            reasonNames: ReasonCode.allCases.map(\.rawValue), workers: workerCount)
        // Listeners first, then outbound entries: a socket's index is its slot (`LoopState.slot`).
        let addresses = snapshot.listeners.map(\.listen) + snapshot.outbound.map(\.listen)
        let descriptorLimit = DescriptorLimit.raise()
        var sockets: [[Int32]] = []
        do {
            for address in addresses { try ListenerSocket.checkAvailable(address) }
            for _ in 0..<workerCount {
                sockets.append(try addresses.map { try ListenerSocket.bind($0) })
            }
        } catch {
            for fd in sockets.joined() { Glibc.close(fd) }
            log.close()
            throw error
        }

        let store = SnapshotStore(try Reloader.publication(for: snapshot, generation: 1, workers: workerCount))
        let reloader = Reloader(configPath: snapshot.config.configPath, store: store, log: log, metrics: metrics)
        guard let base = event_base_new() else { throw WorkerError(message: "event_base_new failed") }
        defer { event_base_free(base) }
        var admin: AdminServer?
        do {
            admin = try AdminServer(
                base: base, address: snapshot.config.admin, allowRemote: snapshot.config.adminAllowRemote,
                reloader: reloader)
        } catch  where snapshot.config.adminIsDefault {
            logger.warning("admin endpoint disabled: \(error) (set admin: in the config to choose where it listens)")
        }

        // Everything privileged (ports, admin socket, log file) is open: give up root now.
        try Privileges.drop(
            user: snapshot.config.user, group: snapshot.config.group, admin: admin?.address, logger: logger)
        let load = ListenerLoad(listeners: addresses.count)
        var workers: [Worker] = []
        for (index, workerSockets) in sockets.enumerated() {
            workers.append(
                try Worker(
                    index: index, store: store, sockets: workerSockets, log: log, metrics: metrics.workers[index],
                    load: load, logger: logger))
        }
        reloader.workers = workers
        for worker in workers { worker.start() }
        let watcher = FileWatcher(base: base, reloader: reloader)
        watcher?.watch(snapshot.config.watchedFiles)
        reloader.afterPublication = { [weak watcher, logger] publication in
            watcher?.watch(publication.snapshot.config.watchedFiles)
            // Checkpoints are signed with the SVID in force.
            sealer.update(identity: publication.snapshot.identity, id: publication.snapshot.ownID)
            for warning in FilePolicy.warnings(publication.snapshot) + publication.snapshot.warnings {
                logger.warning("\(warning)")
            }
        }

        // Said once everything is open, so it counts what is held; a start that fails says only why.
        if let warning = DescriptorLimit.warning(for: snapshot.config, limit: descriptorLimit) {
            logger.warning("\(warning)")
        }
        let listening =
            (snapshot.listeners.map { "\($0.name)=\($0.listen)->\($0.upstream)" }
            + snapshot.outbound.map { "\($0.name)=\($0.listen)=>\($0.target)" }).joined(separator: " ")
        logger.info(
            "ready: \(listening) workers=\(workers.count) id=\(snapshot.ownID) admin=\(admin.map { "\($0.address)" } ?? "off")"
        )

        serveControlLoop(base, reloader)
        logger.info("shutting down: closing listeners, then connections")
        for worker in workers { worker.closeListenersAndWait() }
        for worker in workers { worker.stopAndWait() }
        withExtendedLifetime((admin, watcher)) {}
        log.close()
        logger.info("stopped")
    }

    /// Runs until SIGTERM or SIGINT; SIGHUP reloads in between.
    private func serveControlLoop(_ base: OpaquePointer, _ reloader: Reloader) {
        let control = ControlContext(base: base, reloader: reloader)
        let logForSignal = Unmanaged.passUnretained(reloader.log).toOpaque()
        let context = Unmanaged.passUnretained(control).toOpaque()
        let events = [
            event_new(base, SIGTERM, Int16(EV_SIGNAL | EV_PERSIST), stopSignalCallback, context),
            event_new(base, SIGINT, Int16(EV_SIGNAL | EV_PERSIST), stopSignalCallback, context),
            event_new(base, SIGHUP, Int16(EV_SIGNAL | EV_PERSIST), reloadSignalCallback, context),
            event_new(base, SIGUSR1, Int16(EV_SIGNAL | EV_PERSIST), reopenSignalCallback, logForSignal),
        ].compactMap { $0 }
        for event in events { event_add(event, nil) }
        event_base_dispatch(base)
        for event in events { event_free(event) }
        withExtendedLifetime(control) {}
    }
}

private final class ControlContext {
    let base: OpaquePointer
    let reloader: Reloader
    init(base: OpaquePointer, reloader: Reloader) {
        self.base = base
        self.reloader = reloader
    }
}

private let stopSignalCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    event_base_loopbreak(Unmanaged<ControlContext>.fromOpaque(context).takeUnretainedValue().base)
}

/// SIGUSR1: reopen the connection log by name, after logrotate moved it.
private let reopenSignalCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<ConnectionLog>.fromOpaque(context).takeUnretainedValue().reopen()
}

private let reloadSignalCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    _ = Unmanaged<ControlContext>.fromOpaque(context).takeUnretainedValue().reloader.reload(trigger: "sighup")
}
