import Foundation
import Glibc
import Synchronization
import WardObservability
import WardSystem
import WardTLS

/// The connection log: workers hand finished lines to their own `LogQueue`, which never blocks
/// on I/O and is shared with no other worker; a dedicated thread writes them. Each queue is
/// bounded: when the writer falls behind, lines are dropped, counted, and a `log_dropped` record
/// says how many once writing catches up.
///
/// With `chain`, the writer adds `"prev"`, the SHA-256 of the previous line's bytes (without its
/// newline), to every line, across reopen and restart, and writes signed `checkpoint` lines
/// (`LogChain`), so `ward audit verify` detects edits, removed lines and rewritten chains.
public final class ConnectionLog: Sendable {
    /// When checkpoints are written, and with what key.
    public struct Checkpoints: Sendable {
        public var everyLines: Int
        public var interval: Duration
        public var sealer: LogSealer
        public init(everyLines: Int, interval: Duration, sealer: LogSealer) {
            self.everyLines = everyLines
            self.interval = interval
            self.sealer = sealer
        }
    }

    public static let defaultCapacity = 65_536

    private struct State {
        var closed = false
        var reopen = false
    }

    private let state = Mutex(State())
    /// Every producer's queue; appended at start-up (a worker's) and read by the writer.
    private let queues: Mutex<[LogQueue]>
    /// For lines from threads without a queue of their own (the control plane).
    private let shared: LogQueue
    private let droppedTotal = Atomic<Int64>(0)
    private let reopenFailureTotal = Atomic<Int64>(0)
    private let writeFailureTotal = Atomic<Int64>(0)
    private let writeProblem = Mutex<String?>(nil)
    /// Bytes a failed write left; the writer retries them before anything else. Writer thread.
    private nonisolated(unsafe) var unwritten: [UInt8] = []
    /// Why the last reopen failed, until one succeeds (for `/healthz`).
    private let reopenProblem = Mutex<String?>(nil)
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let capacity: Int
    private let path: String
    private let chain: Bool
    private let checkpoints: Checkpoints?
    /// Owned by the writer thread once it starts.
    private nonisolated(unsafe) var descriptor: Int32
    private nonisolated(unsafe) var previousDigest: String
    private nonisolated(unsafe) var linesSinceCheckpoint = 0
    private nonisolated(unsafe) var nextSeq: Int64 = 0
    private nonisolated(unsafe) var lastCheckpoint = ContinuousClock.now

    /// Opens `path` for appending (`-` is standard output). Call at start-up, not on a loop.
    /// `checkpoints` needs `chain`.
    public init(
        path: String, chain: Bool = false, checkpoints: Checkpoints? = nil,
        capacity: Int = ConnectionLog.defaultCapacity
    ) throws(LogOpenError) {
        self.path = path
        self.chain = chain
        self.checkpoints = chain ? checkpoints : nil
        self.capacity = capacity
        let shared = LogQueue(capacity: capacity, wakeup: wakeup)
        self.shared = shared
        queues = Mutex([shared])
        descriptor = try Self.open(path)
        // A chain continues from the last line already in the file.
        let tail = chain ? Self.tail(path) : nil
        previousDigest = tail?.lastDigest ?? LogChain.genesisDigest
        nextSeq = tail?.lastSeq.map { $0 + 1 } ?? 0
        // A new file opens with a genesis checkpoint; a restart on an old one says so, and how
        // many lines it found after the last checkpoint: it cannot vouch for those.
        checkpoint(tail == nil ? "genesis" : "start", unsealedBefore: tail?.unsealed ?? 0)
        let thread = Thread { [self] in self.writeLoop() }
        thread.name = "ward-log"
        thread.start()
    }

    private static func open(_ path: String) throws(LogOpenError) -> Int32 {
        if path == "-" { return STDOUT_FILENO }
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw LogOpenError(path: path, reason: CText.lastError) }
        return fd
    }

    /// A queue of its own for one producer thread (a worker): appending takes only that queue's
    /// lock, which the writer alone shares, so workers never wait on each other to log.
    public func makeQueue() -> LogQueue {
        let queue = LogQueue(capacity: capacity, wakeup: wakeup)
        queues.withLock { $0.append(queue) }
        return queue
    }

    /// Queues one finished line from a thread without a queue of its own. Never waits for I/O.
    public func append(_ line: String, essential: Bool = true) {
        shared.append(line, essential: essential)
    }

    /// Lines dropped since start, for `ward_log_dropped_total`.
    public var dropped: Int64 {
        droppedTotal.load(ordering: .relaxed) + queues.withLock { $0.reduce(0) { $0 + $1.dropped } }
    }

    /// Closes and reopens the file by name (after logrotate moved it). Any thread; the writer
    /// does it between two batches, so no line is lost or split.
    public func reopen() {
        state.withLock { $0.reopen = true }
        wakeup.signal()
    }

    /// Writes everything queued, then stops the writer. Blocks: call at shutdown only.
    public func close() {
        state.withLock { $0.closed = true }
        for queue in queues.withLock({ $0 }) { queue.close() }
        wakeup.signal()
        finished.wait()
        if descriptor != STDOUT_FILENO { Glibc.close(descriptor) }
    }

    private func writeLoop() {
        while true {
            // Count-triggered checkpoints are written as lines are; this one is time-triggered.
            if let checkpoints, linesSinceCheckpoint > 0, ContinuousClock.now - lastCheckpoint >= checkpoints.interval {
                checkpoint("interval")
            }
            let (closed, reopen) = state.withLock { state in
                defer { state.reopen = false }
                return (state.closed, state.reopen)
            }
            var batch: [String] = []
            var dropped: Int64 = 0
            for queue in queues.withLock({ $0 }) {
                let (lines, lost) = queue.take()
                batch += lines
                dropped += lost
            }
            if reopen { reopenFile() }
            if batch.isEmpty && dropped == 0 {
                if closed { break }
                if !reopen { waitForLines() }
                continue
            }
            var lines = batch
            if dropped > 0 {
                var line = LogLine(event: "log_dropped", connection: nil, timestamp: Self.now())
                line.add("dropped", dropped)
                lines.append(line.finish())
            }
            guard chain, let checkpoints else {
                write(lines.joined())
                continue
            }
            // A checkpoint after exactly `everyLines` lines: `verify` holds the writer to it.
            var chunk = ""
            for line in lines {
                chunk += chained(line)
                linesSinceCheckpoint += 1
                if linesSinceCheckpoint >= checkpoints.everyLines {
                    write(chunk)
                    chunk = ""
                    checkpoint("interval")
                }
            }
            write(chunk)
        }
        checkpoint("close")
        finished.signal()
    }

    /// Sleeps until lines arrive, or until the next interval checkpoint is due.
    private func waitForLines() {
        if !unwritten.isEmpty {
            // Retry the write that failed once a second, traffic or not.
            _ = wakeup.wait(timeout: .now() + .seconds(1))
            flushUnwritten()
            return
        }
        guard let checkpoints, linesSinceCheckpoint > 0 else {
            wakeup.wait()
            return
        }
        let due = checkpoints.interval - (ContinuousClock.now - lastCheckpoint)
        let (seconds, attoseconds) = max(due, .zero).components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        _ = wakeup.wait(timeout: .now() + .nanoseconds(nanoseconds))
    }

    /// Adds `"prev"` and remembers this line's digest for the next.
    private func chained(_ line: String) -> String {
        let (linked, digest) = LogChain.link(line, previous: previousDigest) { Digest.sha256Hex($0) }
        previousDigest = digest
        return linked
    }

    /// Writes a signed checkpoint over every line so far. Writer thread (or init, before it starts).
    private func checkpoint(_ kind: String, unsealedBefore: Int = 0) {
        guard let checkpoints else { return }
        let timestamp = Self.now()
        var stamp = ""
        LogLine.appendTimestamp(timestamp, to: &stamp)
        let fields = LogChain.SealFields(
            kind: kind, timestamp: stamp, seq: nextSeq, every: Int64(checkpoints.everyLines),
            intervalMilliseconds: checkpoints.interval.milliseconds, unsealedBefore: Int64(unsealedBefore),
            prev: previousDigest)
        guard let line = checkpoints.sealer.checkpoint(fields, timestamp: timestamp) else {
            writeDiagnostic("ward: cannot sign a log checkpoint; the chain goes on unsealed\n")
            return
        }
        write(chained(line))
        nextSeq += 1
        linesSinceCheckpoint = 0
        lastCheckpoint = ContinuousClock.now
    }

    /// On failure the old file stays open and keeps every line: nothing is lost, and the
    /// failure is said on stderr, in `/healthz` and in `ward_log_reopen_failures_total`.
    private func reopenFile() {
        guard path != "-" else { return }
        do {
            let fresh = try Self.open(path)
            // The old file ends sealed; the new one opens linked to it.
            checkpoint("close")
            Glibc.close(descriptor)
            descriptor = fresh
            checkpoint("genesis")
            reopenProblem.withLock { $0 = nil }
        } catch {
            reopenFailureTotal.add(1, ordering: .relaxed)
            reopenProblem.withLock { $0 = error.reason }
            writeDiagnostic("ward: \(error); still writing to the file opened before\n")
        }
    }

    /// Log reopens that failed since start, for `ward_log_reopen_failures_total`.
    public var reopenFailures: Int64 { reopenFailureTotal.load(ordering: .relaxed) }

    /// Why the last reopen failed, or nil once one succeeded.
    public var lastReopenProblem: String? { reopenProblem.withLock { $0 } }

    /// Writes `chunk` after anything an earlier write could not: a full disk or a failing
    /// device leaves no half line and no hole in the chain, only a delay, up to
    /// `maxUnwrittenBytes`; past that, new bytes are dropped and counted.
    private func write(_ chunk: String) {
        if unwritten.count + chunk.utf8.count > Self.maxUnwrittenBytes {
            droppedTotal.add(Int64(chunk.utf8.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }), ordering: .relaxed)
            return
        }
        unwritten.append(contentsOf: chunk.utf8)
        flushUnwritten()
    }

    static let maxUnwrittenBytes = 64 << 20

    private func flushUnwritten() {
        var offset = 0
        defer { unwritten.removeFirst(offset) }
        while offset < unwritten.count {
            let written = unwritten.withUnsafeBytes {
                Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                let reason = CText.lastError
                writeFailureTotal.add(1, ordering: .relaxed)
                writeProblem.withLock { $0 = reason }
                // The log is the audit trail: say so loudly, keep the bytes, keep serving.
                writeDiagnostic("ward: connection log write failed: \(reason); keeping the lines to retry\n")
                return
            }
            offset += written
        }
        writeProblem.withLock { $0 = nil }
    }

    /// Failed writes since start, for `ward_log_write_failures_total`.
    public var writeFailures: Int64 { writeFailureTotal.load(ordering: .relaxed) }

    /// Why writing is failing now, or nil (for `/healthz`).
    public var currentWriteProblem: String? { writeProblem.withLock { $0 } }

    /// What a chain continuing `path` needs from its last MiB: the last line's digest, the
    /// last checkpoint's sequence number, and how many lines follow that checkpoint. Nil for an
    /// empty or unreadable file.
    static func tail(_ path: String) -> (lastDigest: String, lastSeq: Int64?, unsealed: Int)? {
        guard path != "-", let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let window = min(size, 1 << 20)
        try? handle.seek(toOffset: size - window)
        guard let data = try? handle.readToEnd(), !data.isEmpty else { return nil }
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        guard let last = lines.last else { return nil }
        var unsealed = 0
        for line in lines.reversed() {
            if let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                object["event"] as? String == "checkpoint"
            {
                return (Digest.sha256Hex(Data(last)), (object["seq"] as? Int).map(Int64.init), unsealed)
            }
            unsealed += 1
        }
        return (Digest.sha256Hex(Data(last)), nil, unsealed)
    }

    package static func now() -> timeval {
        var time = timeval()
        gettimeofday(&time, nil)
        return time
    }
}

/// One producer's bounded queue of finished lines to the log writer.
public final class LogQueue: Sendable {
    private struct Pending {
        var lines: [String] = []
        var dropped: Int64 = 0
        var closed = false
    }

    private let pending = Mutex(Pending())
    private let capacity: Int
    private let wakeup: DispatchSemaphore
    private let droppedTotal: Atomic<Int64>

    fileprivate init(capacity: Int, wakeup: DispatchSemaphore) {
        self.capacity = capacity
        self.wakeup = wakeup
        self.droppedTotal = Atomic(0)
    }

    /// Queues one finished line. A line that is not `essential` (a failed handshake's) is
    /// dropped once the queue is half full, so a flood of them never crowds out allow, deny,
    /// revoke and close lines.
    public func append(_ line: String, essential: Bool = true) {
        let wake = pending.withLock { pending -> Bool in
            guard !pending.closed else { return false }
            guard pending.lines.count < (essential ? capacity : capacity / 2) else {
                pending.dropped += 1
                droppedTotal.add(1, ordering: .relaxed)
                return false
            }
            pending.lines.append(line)
            return pending.lines.count == 1
        }
        if wake { wakeup.signal() }
    }

    /// Lines this queue dropped since start.
    var dropped: Int64 { droppedTotal.load(ordering: .relaxed) }

    fileprivate func take() -> (lines: [String], dropped: Int64) {
        pending.withLock { pending in
            defer {
                pending.lines = []
                pending.dropped = 0
            }
            return (pending.lines, pending.dropped)
        }
    }

    fileprivate func close() {
        pending.withLock { $0.closed = true }
    }
}

public struct LogOpenError: Error, CustomStringConvertible {
    public var path: String
    public var reason: String
    public var description: String { "\(path): cannot open connection log: \(reason)" }
}

/// Writes one line to standard error with a single write(2): safe from any thread, no locks.
package func writeDiagnostic(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = Glibc.write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
}
