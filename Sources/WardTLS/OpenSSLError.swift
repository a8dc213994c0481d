internal import COpenSSL
import WardSystem

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
        drainCodes().map(text(of:))
    }

    /// Reads and clears the queue, oldest first.
    static func drainCodes() -> [UInt] {
        var codes: [UInt] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            codes.append(code)
        }
        return codes
    }

    /// OpenSSL's reason text for an error code. OpenSSL has none for most TLS alerts a peer can
    /// send (reason `SSL_AD_REASON_OFFSET + description`), nor for codes from newer providers:
    /// those get a made-up text that still names the alert or the code.
    public static func text(of code: UInt) -> String {
        if let reason = CText.optional(ERR_reason_error_string(code)) { return reason }
        let reason = ERR_GET_REASON(code)
        if ERR_GET_LIB(code) == ERR_LIB_SSL, reason >= SSL_AD_REASON_OFFSET, reason < SSL_AD_REASON_OFFSET + 256 {
            return "peer sent TLS alert \(reason - SSL_AD_REASON_OFFSET)"
        }
        return "OpenSSL error 0x\(String(code, radix: 16))"
    }
}
