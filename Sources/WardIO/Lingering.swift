internal import CLibevent
import Glibc

/// Closes sockets politely after Ward's last word (a TLS alert or close_notify) is sent.
///
/// Closing a socket with unread bytes in it makes the kernel send a reset, and a reset that
/// reaches the peer first destroys what was still in flight to it: a client that had already
/// sent data saw a bare reset instead of the alert that says why it was refused. So: FIN first,
/// then read and discard whatever the peer still sends until it closes, `timeout` passes or
/// `maxDiscard` bytes came, then close. Bounded per loop by `capacity`; past it, sockets close
/// at once. Loop thread only.
public final class Lingering {
    static let timeout = timeval(tv_sec: 1, tv_usec: 0)
    static let timeoutMicroseconds: Int64 = 1_000_000
    public static let maxDiscard = 256 * 1024
    public let capacity: Int
    private let base: OpaquePointer
    private var open: [Int32: Entry] = [:]
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 16)

    final class Entry {
        let fd: Int32
        var event: OpaquePointer?
        var discarded = 0
        let deadline: Int64
        unowned let owner: Lingering
        init(fd: Int32, deadline: Int64, owner: Lingering) {
            self.fd = fd
            self.deadline = deadline
            self.owner = owner
        }
    }

    public init(base: OpaquePointer, capacity: Int = 4096) {
        self.base = base
        self.capacity = capacity
    }

    deinit {
        closeAll()
        scratch.deallocate()
    }

    public var count: Int { open.count }

    /// Sends FIN on `fd` now and closes it once the peer is done (or the bounds are reached).
    public func close(_ fd: Int32) {
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_WR))
        guard open.count < capacity, open[fd] == nil else {
            Glibc.close(fd)
            return
        }
        let entry = Entry(fd: fd, deadline: monotonicMicroseconds() + Self.timeoutMicroseconds, owner: self)
        let context = Unmanaged.passUnretained(entry).toOpaque()
        guard let event = event_new(base, fd, Int16(EV_READ | EV_PERSIST), lingerCallback, context) else {
            Glibc.close(fd)
            return
        }
        entry.event = event
        open[fd] = entry
        var wait = Self.timeout
        event_add(event, &wait)
    }

    fileprivate func service(_ entry: Entry, timedOut: Bool) {
        var done = timedOut || monotonicMicroseconds() >= entry.deadline
        while !done {
            let got = recv(entry.fd, scratch.baseAddress, scratch.count, 0)
            if got > 0 {
                entry.discarded += got
                done = entry.discarded >= Self.maxDiscard
                continue
            }
            if got < 0 && errno == EINTR { continue }
            if got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            done = true
        }
        if done { finish(entry) }
    }

    private func finish(_ entry: Entry) {
        if let event = entry.event { event_free(event) }
        entry.event = nil
        Glibc.close(entry.fd)
        open[entry.fd] = nil
    }

    /// Closes every lingering socket at once (the loop is stopping).
    public func closeAll() {
        for entry in Array(open.values) { finish(entry) }
    }
}

/// CLOCK_MONOTONIC in microseconds (vDSO: no system call).
public func monotonicMicroseconds() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Int64(time.tv_sec) * 1_000_000 + Int64(time.tv_nsec) / 1000
}

private let lingerCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, what, context in
    guard let context else { return }
    let entry = Unmanaged<Lingering.Entry>.fromOpaque(context).takeUnretainedValue()
    entry.owner.service(entry, timedOut: Int32(what) & EV_TIMEOUT != 0)
}
