internal import CLibevent
import Glibc
import WardSystem

/// A non-blocking socket with a read and a write event on one libevent loop, and the queue of
/// bytes the kernel has not taken yet. `SocketStream` (plaintext) and `TLSStream` build on it.
///
/// Loop thread only. The events carry an unretained pointer to the object: `closeSocket()`
/// frees them, and runs at the latest in deinit, so no callback outlives it.
open class EventedSocket {
    public let fd: Int32
    public let base: OpaquePointer
    private var readEvent: OpaquePointer?
    private var writeEvent: OpaquePointer?
    private var readArmed = false
    private var writeArmed = false
    /// What `send` did not take; armed writability while not empty.
    public var output = OutputQueue()
    public private(set) var isClosed = false
    /// The first send error (errno), once there is one: later bytes are dropped.
    public private(set) var sendError: Int32 = 0

    /// Takes ownership of `fd` (closed by `closeSocket`). If libevent cannot allocate the
    /// events, the socket starts failed (ENOMEM) and its owner closes it like any other.
    public init(fd: Int32, base: OpaquePointer) {
        self.fd = fd
        self.base = base
        let context = Unmanaged.passUnretained(self).toOpaque()
        readEvent = event_new(base, fd, Int16(EV_READ | EV_PERSIST), socketReadCallback, context)
        writeEvent = event_new(base, fd, Int16(EV_WRITE | EV_PERSIST), socketWriteCallback, context)
        if readEvent == nil || writeEvent == nil { sendError = ENOMEM }
    }

    deinit { closeSocket() }

    /// Called when the socket is readable (or `triggerRead` asked for it).
    open func readReady() {}
    /// Called when the socket is writable while `watchWritable(true)`.
    open func writeReady() {}

    public func watchReadable(_ on: Bool) {
        guard on != readArmed, let readEvent else { return }
        readArmed = on
        if on { event_add(readEvent, nil) } else { event_del(readEvent) }
    }

    public func watchWritable(_ on: Bool) {
        guard on != writeArmed, let writeEvent else { return }
        writeArmed = on
        if on { event_add(writeEvent, nil) } else { event_del(writeEvent) }
    }

    public var isWatchingReadable: Bool { readArmed }

    /// Runs `readReady` from the loop soon, though the socket may have nothing new: for bytes
    /// already buffered above the socket (TLS read-ahead).
    public func triggerRead() {
        guard let readEvent else { return }
        event_active(readEvent, EV_READ, 0)
    }

    /// Sends `bytes` now if nothing is queued ahead of them; queues what the kernel does not
    /// take. Returns false once sending has failed.
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard sendError == 0, !isClosed else { return false }
        guard bytes.count > 0 else { return true }
        if !output.isEmpty {
            output.append(bytes)
            return true
        }
        let (offset, code) = sendAvailable(fd, bytes)
        if code != 0 {
            sendError = code
            return false
        }
        if offset < bytes.count {
            output.append(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
            watchWritable(true)
        }
        return true
    }

    /// Sends from the queue; stops watching writability once it is empty. True when drained.
    public func sendQueued() -> Bool {
        guard sendError == 0 else {
            output.release()
            watchWritable(false)
            return false
        }
        let code = output.send(to: fd)
        if code != 0 {
            sendError = code
            output.release()
        }
        if output.isEmpty { watchWritable(false) }
        return output.isEmpty && code == 0
    }

    /// Sends FIN: the peer reads the end of the stream; reading goes on.
    public func shutdownWrite() {
        guard !isClosed else { return }
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Closes with a reset instead of FIN: the peer must not read a truncated stream as a
    /// complete one when the other side of the splice aborted.
    public func abort() {
        guard !isClosed else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        closeSocket()
    }

    /// Frees the events and closes the descriptor. Idempotent.
    public func closeSocket() {
        let fd = detachSocket()
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Frees the events and gives the descriptor to the caller instead of closing it: for a
    /// lingering close. -1 once closed or detached.
    public func detachSocket() -> Int32 {
        guard !isClosed else { return -1 }
        isClosed = true
        if let readEvent { event_free(readEvent) }
        if let writeEvent { event_free(writeEvent) }
        readEvent = nil
        writeEvent = nil
        readArmed = false
        writeArmed = false
        output.release()
        return fd
    }
}

private let socketReadCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<EventedSocket>.fromOpaque(context).takeUnretainedValue().readReady()
}

private let socketWriteCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = {
    _, _, context in
    guard let context else { return }
    Unmanaged<EventedSocket>.fromOpaque(context).takeUnretainedValue().writeReady()
}

/// errno as text, or a fallback when there is none.
public func errnoDescription(_ code: Int32, otherwise fallback: String = "connection failed") -> String {
    code == 0 ? fallback : CText.errno(code)
}
