internal import COpenSSL

/// An OpenSSL failure with the thread's error queue drained into its message, so no stale
/// error leaks into the next operation on this thread.
public struct OpenSSLError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let details: [String]

    public var description: String {
        details.isEmpty ? operation : "\(operation): \(details.joined(separator: "; "))"
    }

    /// Captures and clears the calling thread's OpenSSL error queue.
    public static func drain(_ operation: String) -> OpenSSLError {
        OpenSSLError(operation: operation, details: drainQueue())
    }

    /// Reads and clears the queue; each entry is OpenSSL's reason text.
    public static func drainQueue() -> [String] {
        var details: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                details.append(String(cString: reason))
            } else {
                details.append("error 0x\(String(code, radix: 16))")
            }
        }
        return details
    }
}
