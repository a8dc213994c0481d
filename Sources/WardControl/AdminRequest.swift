/// The head of one admin HTTP request, parsed strictly.
///
/// The admin endpoint takes no request bodies and answers one request per connection, so this
/// reads only a request line and headers: anything unusual (obs-fold, control bytes, a body, a
/// transfer coding, a second Host) is refused rather than interpreted. libevent 2.1's evhttp
/// cannot cap or deadline its connections, which the admin endpoint needs; with no body and
/// nothing proxied, there is no second parser downstream to disagree with this one.
package struct AdminRequest: Equatable {
    package var method: String
    package var target: String
    /// Names lowercased, in order.
    package var headers: [(name: String, value: String)]

    package static let maxHeadBytes = 8 * 1024

    package enum Parse: Equatable {
        /// No end of head yet, and still under the size limit.
        case incomplete
        case complete(AdminRequest)
        /// Refused with this status and reason; the connection then closes.
        case refused(status: Int, reason: String)
    }

    package func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }

    /// The path without its query.
    package var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0] }

    package static func == (lhs: AdminRequest, rhs: AdminRequest) -> Bool {
        lhs.method == rhs.method && lhs.target == rhs.target
            && lhs.headers.map(\.name) == rhs.headers.map(\.name)
            && lhs.headers.map(\.value) == rhs.headers.map(\.value)
    }

    /// Parses the bytes received so far.
    package static func parse(_ bytes: some Collection<UInt8>) -> Parse {
        let bytes = Array(bytes.prefix(maxHeadBytes + 4))
        guard let headLength = endOfHead(bytes) else {
            return bytes.count > maxHeadBytes ? .refused(status: 431, reason: "request head over 8 KiB") : .incomplete
        }
        guard headLength <= maxHeadBytes else { return .refused(status: 431, reason: "request head over 8 KiB") }
        var lines = bytes[..<headLength].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .map { $0.last == UInt8(ascii: "\r") ? $0.dropLast() : $0 }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let requestLine = lines.first else { return .refused(status: 400, reason: "empty request") }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ (65...90).contains($0) }),
            parts[1].first == UInt8(ascii: "/"), parts[1].allSatisfy({ (0x21...0x7e).contains($0) }),
            parts[2].elementsEqual("HTTP/1.1".utf8) || parts[2].elementsEqual("HTTP/1.0".utf8)
        else { return .refused(status: 400, reason: "malformed request line") }
        var request = AdminRequest(
            method: String(decoding: parts[0], as: UTF8.self), target: String(decoding: parts[1], as: UTF8.self),
            headers: [])
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon != line.startIndex,
                line[..<colon].allSatisfy(isTokenByte),
                line[line.index(after: colon)...].allSatisfy({ $0 == 0x09 || (0x20...0x7e).contains($0) })
            else { return .refused(status: 400, reason: "malformed header line") }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            let value = String(decoding: line[line.index(after: colon)...], as: UTF8.self)
                .trimmingSpacesAndTabs()
            request.headers.append((name, value))
        }
        if request.headers.filter({ $0.name == "host" }).count > 1 {
            return .refused(status: 400, reason: "more than one Host header")
        }
        if request.header("transfer-encoding") != nil {
            return .refused(status: 400, reason: "request bodies are not accepted")
        }
        for length in request.headers where length.name == "content-length" {
            guard !length.value.isEmpty, length.value.utf8.allSatisfy({ (48...57).contains($0) }) else {
                return .refused(status: 400, reason: "malformed Content-Length")
            }
            guard length.value.utf8.allSatisfy({ $0 == 48 }) else {
                return .refused(status: 413, reason: "request bodies are not accepted")
            }
        }
        return .complete(request)
    }

    /// Bytes up to and including the blank line that ends the head (CRLF or bare LF lines).
    private static func endOfHead(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                let next = index + 1
                if next < bytes.count, bytes[next] == UInt8(ascii: "\n") { return next + 1 }
                if next + 1 < bytes.count, bytes[next] == UInt8(ascii: "\r"), bytes[next + 1] == UInt8(ascii: "\n") {
                    return next + 2
                }
            }
            index += 1
        }
        return nil
    }

    /// RFC 9110 tchar.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

extension String {
    fileprivate func trimmingSpacesAndTabs() -> String {
        let scalars = unicodeScalars
        let start = scalars.firstIndex { $0 != " " && $0 != "\t" } ?? scalars.endIndex
        let end = scalars.lastIndex { $0 != " " && $0 != "\t" }.map { scalars.index(after: $0) } ?? start
        return String(scalars[start..<max(start, end)])
    }
}
