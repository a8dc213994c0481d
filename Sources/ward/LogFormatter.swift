import Foundation
import WardIdentity
import WardPolicy

/// Filters and renders connection-log records for people (`ward logs`).
struct LogFilter: Sendable {
    var events: Set<String>
    var peer: IdentityPattern?
    var listener: String?

    init(events: Set<String> = [], peer: IdentityPattern? = nil, listener: String? = nil) {
        self.events = events
        self.peer = peer
        self.listener = listener
    }

    func accepts(_ record: [String: Any]) -> Bool {
        if !events.isEmpty, !events.contains(record["event"] as? String ?? "") { return false }
        if let listener, record["listener"] as? String != listener { return false }
        if let peer {
            guard let text = record["peer_id"] as? String, let id = try? SPIFFEID(parsing: text), peer.matches(id)
            else { return false }
        }
        return true
    }
}

enum LogFormatter {
    /// One aligned line: time, event, listener, peer, then what matters for the event.
    static func human(_ record: [String: Any], color: Bool) -> String {
        let event = record["event"] as? String ?? "?"
        let time =
            (record["ts"] as? String).map {
                $0.replacingOccurrences(of: "T", with: " ").replacingOccurrences(of: "Z", with: "")
            } ?? ""
        let conn = (record["conn"] as? Int).map { "#\($0)" } ?? ""
        var details: [String] = []
        for key in ["rule", "reason", "close_cause", "trigger", "error", "generation", "detail"] {
            if let value = record[key] { details.append("\(key)=\(value)") }
        }
        if record["enforced"] as? Bool == false { details.append("enforced=false") }
        if let bytesIn = record["bytes_in"], let bytesOut = record["bytes_out"] {
            details.append("in=\(bytesIn) out=\(bytesOut)")
        }
        if let duration = record["duration_ms"], event == "close" { details.append("\(duration)ms") }
        let columns = [
            pad(time, 23), pad(event, 15), pad(conn, 7), pad(record["listener"] as? String ?? "-", 10),
            pad(record["peer_id"] as? String ?? (record["peer_addr"] as? String ?? "-"), 44),
            details.joined(separator: " "),
        ]
        // Everything in a record came from the network or a file: never let it drive the terminal.
        let line = TerminalText.escape(columns.joined(separator: " "))
        guard color else { return line }
        let code: String
        switch event {
        case "allow": code = "32"
        case "deny" where record["enforced"] as? Bool == false: code = "33"
        case "deny", "revoke": code = "31"
        case "handshake_error": code = "35"
        case "reload": code = record["ok"] as? Bool == true ? "36" : "31;1"
        case "close": code = "2"
        default: code = "0"
        }
        return "\u{1B}[\(code)m\(line)\u{1B}[0m"
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
