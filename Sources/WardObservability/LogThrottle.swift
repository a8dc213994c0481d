import WardPolicy

/// Bounds the `handshake_error` lines one source can cause: a peer that fails handshakes in a
/// loop must not fill the disk (71 MB in 90 s from two clients was seen). Each source gets
/// `linesPerWindow` lines per window; the rest are counted, and `drain` reports the counts
/// once the window is over, as one summary line per source. Allow, deny and close lines never
/// pass through here.
///
/// Many sources together (an attacker rotating addresses) get `linesPerWindowOverall` lines
/// per window; beyond that every source is counted in the shared entry, reported with no
/// address. One per worker, used on its thread only; memory is bounded by `maxSources` (further
/// sources share that entry too).
public struct LogThrottle {
    public struct Suppressed: Equatable, Sendable {
        /// nil for the shared entry of sources past `maxSources`.
        public var source: IPAddress?
        public var count: Int
        /// Suppressed lines per reason code.
        public var reasons: [String: Int]

        public init(source: IPAddress?, count: Int, reasons: [String: Int]) {
            self.source = source
            self.count = count
            self.reasons = reasons
        }
    }

    private struct Entry {
        var windowStart: Int64
        var logged = 0
        var suppressed = 0
        var reasons: [String: Int] = [:]
    }

    public let linesPerWindow: Int
    public let linesPerWindowOverall: Int
    public let windowMilliseconds: Int64
    public let maxSources: Int
    private var entries: [IPAddress?: Entry] = [:]
    private var overallWindowStart: Int64 = 0
    private var overallLogged = 0

    public init(
        linesPerWindow: Int = 20, linesPerWindowOverall: Int = 200, windowMilliseconds: Int64 = 1000,
        maxSources: Int = 4096
    ) {
        self.linesPerWindow = linesPerWindow
        self.linesPerWindowOverall = linesPerWindowOverall
        self.windowMilliseconds = windowMilliseconds
        self.maxSources = maxSources
    }

    /// Whether a line for `source` may be written now; if not, it is counted under `reason`.
    public mutating func admit(_ source: IPAddress?, reason: String, now: Int64) -> Bool {
        if now - overallWindowStart >= windowMilliseconds {
            overallWindowStart = now
            overallLogged = 0
        }
        let overBudget = overallLogged >= linesPerWindowOverall
        let key = !overBudget && (entries[source] != nil || entries.count < maxSources) ? source : nil
        var entry = entries[key] ?? Entry(windowStart: now)
        defer { entries[key] = entry }
        if !overBudget, entry.logged < linesPerWindow {
            entry.logged += 1
            overallLogged += 1
            return true
        }
        entry.suppressed += 1
        entry.reasons[reason, default: 0] += 1
        return false
    }

    /// The suppressed counts of every window that has ended, oldest sources first; forgets
    /// those sources. Call about once a window.
    public mutating func drain(now: Int64) -> [Suppressed] {
        var reports: [Suppressed] = []
        for (source, entry) in entries where now - entry.windowStart >= windowMilliseconds {
            if entry.suppressed > 0 {
                reports.append(Suppressed(source: source, count: entry.suppressed, reasons: entry.reasons))
            }
            entries[source] = nil
        }
        return reports
    }

    public var isEmpty: Bool { entries.isEmpty }
}
