import Glibc

/// Builds one JSON Lines record. Fields are appended in call order; strings are escaped.
/// Built on the worker, once per event (never per byte), then handed to `ConnectionLog`.
package struct LogLine {
    private var text: String

    /// `connection` is nil for process-level events (`reload`, `log_dropped`).
    package init(event: String, connection: UInt64?, timestamp: timeval) {
        text = "{\"ts\":\""
        text.reserveCapacity(512)
        Self.appendTimestamp(timestamp, to: &text)
        text += "\",\"event\":\""
        text += event
        text += "\""
        if let connection {
            text += ",\"conn\":"
            text += String(connection)
        }
    }

    package mutating func add(_ key: String, _ value: String?) {
        guard let value else { return }
        text += ",\""
        text += key
        text += "\":"
        Self.appendQuoted(value, to: &text)
    }

    package mutating func add(_ key: String, _ value: Int64?) {
        guard let value else { return }
        text += ",\""
        text += key
        text += "\":"
        text += String(value)
    }

    package mutating func add(_ key: String, _ value: Bool) {
        text += ",\"\(key)\":\(value)"
    }

    /// Adds `["a","b"]`.
    mutating func addStrings(_ key: String, _ values: [String]) {
        text += ",\"\(key)\":["
        for (index, value) in values.enumerated() {
            if index > 0 { text += "," }
            Self.appendQuoted(value, to: &text)
        }
        text += "]"
    }

    /// Adds `{"name":count,...}`, names sorted.
    mutating func addCounts(_ key: String, _ counts: [String: Int]) {
        var object = "{"
        for (index, name) in counts.keys.sorted().enumerated() {
            if index > 0 { object += "," }
            Self.appendQuoted(name, to: &object)
            object += ":\(counts[name] ?? 0)"
        }
        text += ",\"\(key)\":\(object)}"
    }

    /// Adds an epoch-seconds instant as RFC 3339 UTC.
    package mutating func addTime(_ key: String, epochSeconds: Int64?) {
        guard let epochSeconds else { return }
        add(key, Self.rfc3339(epochSeconds: epochSeconds))
    }

    /// RFC 3339 UTC to the second, e.g. `2026-11-22T22:50:31Z`.
    static func rfc3339(epochSeconds: Int64) -> String {
        var time = ""
        appendTimestamp(timeval(tv_sec: Int(epochSeconds), tv_usec: 0), to: &time, milliseconds: false)
        return time
    }

    package func finish() -> String { text + "}\n" }

    /// A JSON string: `value` escaped, in quotes.
    static func appendQuoted(_ value: String, to out: inout String) {
        out += "\""
        escape(value, into: &out)
        out += "\""
    }

    static func escape(_ value: String, into out: inout String) {
        // Nearly every value (IDs, addresses, hex) needs no escaping: one scan, one append.
        if !value.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) {
            out += value
            return
        }
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hexDigits = Array("0123456789abcdef")
                out += "\\u00"
                out.append(hexDigits[Int(scalar.value >> 4)])
                out.append(hexDigits[Int(scalar.value & 0xf)])
            default: out.unicodeScalars.append(scalar)
            }
        }
    }

    /// RFC 3339 UTC, e.g. `2026-11-22T22:50:31.123Z`.
    package static func appendTimestamp(_ time: timeval, to out: inout String, milliseconds: Bool = true) {
        var seconds = time_t(time.tv_sec)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) {
            let digits = String(value)
            if digits.count < width { out += String(repeating: "0", count: width - digits.count) }
            out += digits
        }
        pad(parts.tm_year + 1900, 4)
        out += "-"
        pad(parts.tm_mon + 1, 2)
        out += "-"
        pad(parts.tm_mday, 2)
        out += "T"
        pad(parts.tm_hour, 2)
        out += ":"
        pad(parts.tm_min, 2)
        out += ":"
        pad(parts.tm_sec, 2)
        if milliseconds {
            out += "."
            pad(Int32(time.tv_usec / 1000), 3)
        }
        out += "Z"
    }
}
