import Atomics
import Foundation

/// Bucket upper bounds of a histogram, in the metric's unit.
public struct HistogramBuckets: Sendable {
    public let bounds: [Double]
    public init(_ bounds: [Double]) { self.bounds = bounds }

    public static let handshakeSeconds = HistogramBuckets([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ])
    public static let svidRemainingSeconds = HistogramBuckets([
        60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 604_800,
    ])
}

/// What a worker counts, laid out in one `CounterBlock`. Names and labels are frozen once
/// released (docs/metrics.md).
public final class WorkerMetrics: Sendable {
    public enum Decision: Int, CaseIterable, Sendable {
        case allow, deny, auditDeny

        var label: String { ["allow", "deny", "audit_deny"][rawValue] }
    }

    public enum Direction: Int, Sendable {
        case incoming, outgoing
    }

    let listeners: Int
    let reasons: Int
    let block: CounterBlock
    private let connectionsBase = 0
    private let errorsBase: Int
    private let activeBase: Int
    private let bytesBase: Int
    private let revokedIndex: Int
    private let pausedIndex: Int
    private let handshakeBase: Int
    private let remainingBase: Int

    public init(listeners: Int, reasons: Int) {
        self.listeners = listeners
        self.reasons = reasons
        errorsBase = connectionsBase + listeners * Decision.allCases.count
        activeBase = errorsBase + listeners * reasons
        bytesBase = activeBase + listeners
        revokedIndex = bytesBase + listeners * 2
        pausedIndex = revokedIndex + 1
        handshakeBase = pausedIndex + 1
        // Each histogram: a count per bucket, +Inf, the sum (micro-units), the count.
        remainingBase = handshakeBase + HistogramBuckets.handshakeSeconds.bounds.count + 3
        block = CounterBlock(count: remainingBase + HistogramBuckets.svidRemainingSeconds.bounds.count + 3)
    }

    // MARK: Hot path: one relaxed store each, no lock, no formatting.

    @inline(__always) public func connection(listener: Int, _ decision: Decision) {
        block.add(connectionsBase + listener * Decision.allCases.count + decision.rawValue)
    }

    @inline(__always) public func handshakeError(listener: Int, reason: Int) {
        block.add(errorsBase + listener * reasons + reason)
    }

    @inline(__always) public func active(listener: Int, _ delta: Int64) { block.add(activeBase + listener, delta) }

    @inline(__always) public func bytes(listener: Int, _ direction: Direction, _ count: Int64) {
        block.add(bytesBase + listener * 2 + direction.rawValue, count)
    }

    @inline(__always) public func revoked() { block.add(revokedIndex) }

    @inline(__always) public func pausedListeners(_ delta: Int64) { block.add(pausedIndex, delta) }

    @inline(__always) public func handshakeDuration(seconds: Double) {
        observe(seconds, base: handshakeBase, buckets: HistogramBuckets.handshakeSeconds)
    }

    @inline(__always) public func peerSVIDRemaining(seconds: Double) {
        observe(seconds, base: remainingBase, buckets: HistogramBuckets.svidRemainingSeconds)
    }

    private func observe(_ value: Double, base: Int, buckets: HistogramBuckets) {
        var bucket = buckets.bounds.count
        for (index, bound) in buckets.bounds.enumerated() where value <= bound {
            bucket = index
            break
        }
        block.add(base + bucket)
        block.add(base + buckets.bounds.count + 1, Int64((value * 1_000_000).rounded()))
        block.add(base + buckets.bounds.count + 2)
    }

    // MARK: Scrape side

    func connections(listener: Int, _ decision: Decision) -> Int64 {
        block.read(connectionsBase + listener * Decision.allCases.count + decision.rawValue)
    }
    func handshakeErrors(listener: Int, reason: Int) -> Int64 { block.read(errorsBase + listener * reasons + reason) }
    func active(listener: Int) -> Int64 { block.read(activeBase + listener) }
    func bytes(listener: Int, _ direction: Direction) -> Int64 {
        block.read(bytesBase + listener * 2 + direction.rawValue)
    }
    var revokedCount: Int64 { block.read(revokedIndex) }
    public var pausedListenerCount: Int64 { block.read(pausedIndex) }
    func histogram(_ which: Histogram) -> [Int64] {
        let (base, buckets) =
            which == .handshake
            ? (handshakeBase, HistogramBuckets.handshakeSeconds)
            : (remainingBase, HistogramBuckets.svidRemainingSeconds)
        return (0..<(buckets.bounds.count + 3)).map { block.read(base + $0) }
    }

    enum Histogram { case handshake, remaining }
}

/// Everything `/metrics` serves: per-worker blocks summed at scrape, plus process-level values.
public final class MetricsRegistry: Sendable {
    public let listenerNames: [String]
    /// Outbound entries: counted in the slots after the listeners'.
    public let outboundNames: [String]
    public let reasonNames: [String]
    public let workers: [WorkerMetrics]
    private let reloadsOK = ManagedAtomic<Int64>(0)
    private let reloadsFailed = ManagedAtomic<Int64>(0)

    public init(listenerNames: [String], outboundNames: [String] = [], reasonNames: [String], workers: Int) {
        self.listenerNames = listenerNames
        self.outboundNames = outboundNames
        self.reasonNames = reasonNames
        self.workers = (0..<workers).map { _ in
            WorkerMetrics(listeners: listenerNames.count + outboundNames.count, reasons: reasonNames.count)
        }
    }

    public func reload(ok: Bool) {
        (ok ? reloadsOK : reloadsFailed).wrappingIncrement(ordering: .relaxed)
    }

    /// Values only the caller knows at scrape time.
    public struct ProcessValues: Sendable {
        public var generation: UInt64
        public var svidExpiry: Int64
        public var logDropped: Int64
        public var logReopenFailures: Int64
        public var logWriteFailures: Int64
        public init(
            generation: UInt64, svidExpiry: Int64, logDropped: Int64, logReopenFailures: Int64 = 0,
            logWriteFailures: Int64 = 0
        ) {
            self.generation = generation
            self.svidExpiry = svidExpiry
            self.logDropped = logDropped
            self.logReopenFailures = logReopenFailures
            self.logWriteFailures = logWriteFailures
        }
    }

    /// Prometheus text exposition format 0.0.4. Runs on the admin thread, never a data-plane loop.
    public func render(_ process: ProcessValues) -> String {
        var out = PrometheusText()
        out.header("ward_connections_total", "counter", "Connections decided, by listener and decision.")
        for (l, listener) in listenerNames.enumerated() {
            for decision in WorkerMetrics.Decision.allCases {
                out.sample(
                    "ward_connections_total", ["listener": listener, "decision": decision.label],
                    sum { $0.connections(listener: l, decision) })
            }
        }
        out.header("ward_handshake_errors_total", "counter", "Failed handshakes, by listener and log reason code.")
        for (l, listener) in listenerNames.enumerated() {
            for (r, reason) in reasonNames.enumerated() {
                let value = sum { $0.handshakeErrors(listener: l, reason: r) }
                if value > 0 {
                    out.sample("ward_handshake_errors_total", ["listener": listener, "reason": reason], value)
                }
            }
        }
        out.header("ward_active_connections", "gauge", "Open connections, by listener.")
        for (l, listener) in listenerNames.enumerated() {
            out.sample("ward_active_connections", ["listener": listener], sum { $0.active(listener: l) })
        }
        out.header("ward_bytes_total", "counter", "Bytes forwarded: in = client to upstream, out = upstream to client.")
        for (l, listener) in listenerNames.enumerated() {
            out.sample(
                "ward_bytes_total", ["listener": listener, "direction": "in"], sum { $0.bytes(listener: l, .incoming) })
            out.sample(
                "ward_bytes_total", ["listener": listener, "direction": "out"], sum { $0.bytes(listener: l, .outgoing) }
            )
        }
        renderOutbound(&out)
        out.header(
            "ward_revoked_connections_total", "counter", "Open connections closed because a reload withdrew access.")
        out.sample("ward_revoked_connections_total", [:], sum { $0.revokedCount })
        out.header("ward_reloads_total", "counter", "Reloads, by result.")
        out.sample("ward_reloads_total", ["result": "ok"], reloadsOK.load(ordering: .relaxed))
        out.sample("ward_reloads_total", ["result": "error"], reloadsFailed.load(ordering: .relaxed))
        out.header("ward_rules_generation", "gauge", "Generation of the published config and rules.")
        out.sample("ward_rules_generation", [:], Int64(process.generation))
        out.header("ward_svid_expiry_timestamp_seconds", "gauge", "notAfter of Ward's own SVID, Unix seconds.")
        out.sample("ward_svid_expiry_timestamp_seconds", [:], process.svidExpiry)
        histogram(
            &out, "ward_peer_svid_remaining_seconds", "Peer SVID lifetime left at handshake.", .remaining,
            HistogramBuckets.svidRemainingSeconds)
        histogram(
            &out, "ward_handshake_duration_seconds", "From accept to a verified handshake.", .handshake,
            HistogramBuckets.handshakeSeconds)
        out.header("ward_log_dropped_total", "counter", "Connection log lines dropped because the writer fell behind.")
        out.sample("ward_log_dropped_total", [:], process.logDropped)
        out.header(
            "ward_log_reopen_failures_total", "counter",
            "Log reopens (SIGUSR1) that failed; lines kept going to the old file.")
        out.sample("ward_log_reopen_failures_total", [:], process.logReopenFailures)
        out.header(
            "ward_log_write_failures_total", "counter",
            "Log writes that failed (disk full, I/O error); their lines are kept and retried.")
        out.sample("ward_log_write_failures_total", [:], process.logWriteFailures)
        return out.text
    }

    /// Outbound entries: connections by outcome (`allow`, or the reason a server or target was
    /// refused), open connections and bytes (in = app to target, out = target to app).
    private func renderOutbound(_ out: inout PrometheusText) {
        guard !outboundNames.isEmpty else { return }
        let first = listenerNames.count
        out.header(
            "ward_outbound_connections_total", "counter",
            "Outbound connections, by entry and outcome: allow, or the reason code of the refusal.")
        for (o, name) in outboundNames.enumerated() {
            out.sample(
                "ward_outbound_connections_total", ["outbound": name, "outcome": "allow"],
                sum { $0.connections(listener: first + o, .allow) })
            for (r, reason) in reasonNames.enumerated() {
                let value = sum { $0.handshakeErrors(listener: first + o, reason: r) }
                if value > 0 {
                    out.sample("ward_outbound_connections_total", ["outbound": name, "outcome": reason], value)
                }
            }
        }
        out.header("ward_outbound_active_connections", "gauge", "Open outbound connections, by entry.")
        for (o, name) in outboundNames.enumerated() {
            out.sample("ward_outbound_active_connections", ["outbound": name], sum { $0.active(listener: first + o) })
        }
        out.header("ward_outbound_bytes_total", "counter", "Bytes forwarded: in = app to target, out = target to app.")
        for (o, name) in outboundNames.enumerated() {
            out.sample(
                "ward_outbound_bytes_total", ["outbound": name, "direction": "in"],
                sum { $0.bytes(listener: first + o, .incoming) })
            out.sample(
                "ward_outbound_bytes_total", ["outbound": name, "direction": "out"],
                sum { $0.bytes(listener: first + o, .outgoing) })
        }
    }

    private func sum(_ value: (WorkerMetrics) -> Int64) -> Int64 { workers.reduce(0) { $0 + value($1) } }

    private func histogram(
        _ out: inout PrometheusText, _ name: String, _ help: String, _ which: WorkerMetrics.Histogram,
        _ buckets: HistogramBuckets
    ) {
        var totals = [Int64](repeating: 0, count: buckets.bounds.count + 3)
        for worker in workers {
            for (index, value) in worker.histogram(which).enumerated() { totals[index] += value }
        }
        out.header(name, "histogram", help)
        var cumulative: Int64 = 0
        for (index, bound) in buckets.bounds.enumerated() {
            cumulative += totals[index]
            out.sample(name + "_bucket", ["le": PrometheusText.format(bound)], cumulative)
        }
        cumulative += totals[buckets.bounds.count]
        out.sample(name + "_bucket", ["le": "+Inf"], cumulative)
        out.line("\(name)_sum \(PrometheusText.format(Double(totals[buckets.bounds.count + 1]) / 1_000_000))")
        out.sample(name + "_count", [:], totals[buckets.bounds.count + 2])
    }
}

/// Builds the text format; label values are escaped as the format requires.
struct PrometheusText {
    private(set) var text = ""

    mutating func header(_ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Int64) {
        text += name
        if !labels.isEmpty {
            text += "{"
            text += labels.map { "\($0.key)=\"\(Self.escape($0.value))\"" }.joined(separator: ",")
            text += "}"
        }
        text += " \(value)\n"
    }

    mutating func line(_ line: String) { text += line + "\n" }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
