import Foundation
import Glibc
import Synchronization

/// The connection log: workers hand finished lines to `append`, which never blocks on I/O; a
/// dedicated thread writes them. The queue is bounded: when the writer falls behind, lines are
/// dropped, counted, and a `log_dropped` record says how many once writing catches up.
public final class ConnectionLog: Sendable {
    public static let defaultCapacity = 65_536

    private struct State {
        var pending: [String] = []
        var dropped: Int64 = 0
        var closed = false
    }

    private let state = Mutex(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let capacity: Int
    private let descriptor: Int32
    private let ownsDescriptor: Bool

    /// Opens `path` for appending (`-` is standard output). Call at start-up, not on a loop.
    public init(path: String, capacity: Int = ConnectionLog.defaultCapacity) throws(LogOpenError) {
        if path == "-" {
            descriptor = STDOUT_FILENO
            ownsDescriptor = false
        } else {
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw LogOpenError(path: path, reason: String(cString: strerror(errno))) }
            descriptor = fd
            ownsDescriptor = true
        }
        self.capacity = capacity
        let thread = Thread { [self] in self.writeLoop() }
        thread.name = "ward-log"
        thread.start()
    }

    /// Queues one finished line. Safe from any thread; takes a short lock, never waits for I/O.
    public func append(_ line: String) {
        let accepted = state.withLock { state -> Bool in
            guard state.pending.count < capacity, !state.closed else {
                state.dropped += 1
                return false
            }
            state.pending.append(line)
            return state.pending.count == 1
        }
        if accepted { wakeup.signal() }
    }

    /// Writes everything queued, then stops the writer. Blocks: call at shutdown only.
    public func close() {
        state.withLock { $0.closed = true }
        wakeup.signal()
        finished.wait()
        if ownsDescriptor { Glibc.close(descriptor) }
    }

    private func writeLoop() {
        while true {
            let (batch, dropped, closed) = state.withLock { state in
                let taken = (state.pending, state.dropped, state.closed)
                state.pending = []
                state.pending.reserveCapacity(64)
                state.dropped = 0
                return taken
            }
            if batch.isEmpty && dropped == 0 {
                if closed { break }
                wakeup.wait()
                continue
            }
            var chunk = batch.joined()
            if dropped > 0 {
                var line = LogLine(event: "log_dropped", connection: nil, timestamp: Self.now())
                line.add("dropped", dropped)
                chunk += line.finish()
            }
            write(chunk)
        }
        finished.signal()
    }

    private func write(_ chunk: String) {
        var chunk = chunk
        chunk.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    // The log is the audit trail: say so loudly, but keep serving.
                    writeDiagnostic("ward: connection log write failed: \(String(cString: strerror(errno)))\n")
                    return
                }
                offset += written
            }
        }
    }

    static func now() -> timeval {
        var time = timeval()
        gettimeofday(&time, nil)
        return time
    }
}

public struct LogOpenError: Error, CustomStringConvertible {
    public var path: String
    public var reason: String
    public var description: String { "\(path): cannot open connection log: \(reason)" }
}

/// Writes one line to standard error with a single write(2): safe from any thread, no locks.
func writeDiagnostic(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = Glibc.write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
}
