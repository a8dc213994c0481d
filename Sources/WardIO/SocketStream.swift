import Glibc

/// A plaintext TCP stream (the upstream leg), optionally still connecting.
public final class SocketStream: EventedSocket, ByteStream {
    public weak var delegate: (any ByteStreamDelegate)?
    /// Told once whether a non-blocking connect succeeded (errno, 0 on success).
    public var onConnected: ((Int32) -> Void)?
    private var connecting = false
    private var finishRequested = false
    private var writeShut = false
    public var failure: String? { sendError == 0 ? nil : errnoDescription(sendError) }

    /// Starts a non-blocking connect on `fd` (a fresh non-blocking socket) to `address`.
    /// Returns the errno of an immediate failure, or 0; `onConnected` reports the outcome.
    public func connect(to address: UnsafePointer<sockaddr>, length: socklen_t) -> Int32 {
        if Glibc.connect(fd, address, length) == 0 {
            // Loopback may connect at once; report from the loop like any other connect.
            connecting = true
            watchWritable(true)
            return 0
        }
        let code = errno
        guard code == EINPROGRESS else { return code }
        connecting = true
        watchWritable(true)
        return 0
    }

    public override func writeReady() {
        if connecting {
            connecting = false
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
            watchWritable(!output.isEmpty)
            onConnected?(code)
            return
        }
        if sendQueued() {
            finishIfRequested()
            delegate?.streamDrained(self)
        } else if sendError != 0 {
            delegate?.streamDrained(self)
        }
    }

    public override func readReady() {
        delegate?.streamReadable(self)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        while true {
            let got = recv(fd, buffer.baseAddress, buffer.count, 0)
            if got > 0 { return .bytes(count: got, more: got == buffer.count) }
            if got == 0 { return .end }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
            return .failed(errnoDescription(code))
        }
    }

    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool { send(bytes) }

    public var queuedBytes: Int { output.count }
    public func pauseReading() { watchReadable(false) }
    public func resumeReading() { watchReadable(true) }
    public func readAgainSoon() { triggerRead() }

    public func finishWriting() {
        finishRequested = true
        if output.isEmpty { finishIfRequested() }
    }

    private func finishIfRequested() {
        guard finishRequested, !writeShut, !isClosed else { return }
        writeShut = true
        shutdownWrite()
    }
}
