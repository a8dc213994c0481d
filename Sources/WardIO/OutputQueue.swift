internal import CLibevent
import Glibc

/// Bytes the kernel would not take yet, in one contiguous heap block that exists only while
/// something is queued: an idle stream holds no buffer.
public struct OutputQueue: ~Copyable {
    private var storage: UnsafeMutableRawPointer?
    private var capacity = 0
    private var start = 0
    private var end = 0

    public init() {}

    deinit { storage.map { free($0) } }

    public var count: Int { end - start }
    public var isEmpty: Bool { end == start }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        if capacity - end < bytes.count {
            // Move what is left to the front first; grow only if that is not enough.
            let live = count
            if let storage, start > 0 { memmove(storage, storage + start, live) }
            start = 0
            end = live
            if capacity - end < bytes.count {
                let wanted = max(live + bytes.count, capacity * 2, 16 * 1024)
                guard let grown = realloc(storage, wanted) else { fatalError("out of memory") }
                storage = grown
                capacity = wanted
            }
        }
        memcpy(storage! + end, base, bytes.count)
        end += bytes.count
    }

    /// Sends from the front with `send(2)`; returns the errno of a failure other than EAGAIN, or 0.
    public mutating func send(to fd: Int32) -> Int32 {
        guard let storage, start < end else { return 0 }
        let (sent, code) = sendAvailable(fd, UnsafeRawBufferPointer(start: storage + start, count: end - start))
        start += sent
        if start == end { release() }
        return code
    }

    /// Drops everything and gives the memory back.
    public mutating func release() {
        storage.map { free($0) }
        storage = nil
        capacity = 0
        start = 0
        end = 0
    }
}

/// Sends as much of `bytes` as the socket takes now: the count sent, and the errno of a failure
/// other than EAGAIN (0 when the socket was merely full).
func sendAvailable(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> (sent: Int, error: Int32) {
    var offset = 0
    while offset < bytes.count {
        let sent = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
        if sent > 0 {
            offset += sent
            continue
        }
        let code = errno
        if sent < 0 && code == EINTR { continue }
        if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) { break }
        return (offset, sent == 0 ? EPIPE : code)
    }
    return (offset, 0)
}
