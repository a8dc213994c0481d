import Glibc

/// Text from C strings that may be NULL. OpenSSL, libevent and libc all return NULL for codes
/// they have no text for (OpenSSL has none for 223 of the 256 TLS alert descriptions a peer can
/// send), and `String(cString:)` on NULL traps: every C string Ward reads goes through here.
public enum CText {
    /// The string at `pointer`, or `fallback` when it is NULL. Invalid UTF-8 is repaired.
    public static func string(_ pointer: UnsafePointer<CChar>?, or fallback: @autoclosure () -> String) -> String {
        guard let pointer else { return fallback() }
        return String(cString: pointer)
    }

    /// The string at `pointer`, or nil when it is NULL.
    public static func optional(_ pointer: UnsafePointer<CChar>?) -> String? {
        pointer.map { String(cString: $0) }
    }

    /// libc's text for `code` (an errno value).
    public static func errno(_ code: Int32) -> String {
        string(strerror(code), or: "error \(code)")
    }

    /// The calling thread's current errno, as text.
    public static var lastError: String { errno(Glibc.errno) }
}
