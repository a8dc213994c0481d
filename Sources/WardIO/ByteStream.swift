/// What one read from a stream gave.
public enum ReadResult: Equatable {
    /// `count` bytes; `more` when the stream may hold more right now (another read is worth
    /// trying before waiting for the loop), false when the source looked drained.
    case bytes(count: Int, more: Bool)
    /// Nothing now: the stream calls its delegate's `streamReadable` when there is.
    case wouldBlock
    /// The peer finished sending (FIN, or TLS close_notify).
    case end
    case failed(String)
}

/// Told about a stream's I/O readiness; runs on the stream's loop.
public protocol ByteStreamDelegate: AnyObject {
    /// Bytes (or the end of the stream) can be read.
    func streamReadable(_ stream: any ByteStream)
    /// Everything queued for writing has reached the kernel.
    func streamDrained(_ stream: any ByteStream)
}

/// A non-blocking byte stream on one event loop: a plain socket or a TLS session over one.
///
/// Writes never block and never refuse bytes: what the kernel does not take at once is queued
/// in the stream, and `queuedBytes` is what the caller watches for backpressure.
public protocol ByteStream: AnyObject {
    var delegate: (any ByteStreamDelegate)? { get set }
    func read(into buffer: UnsafeMutableRawBufferPointer) -> ReadResult
    /// Sends `bytes` or queues what the socket would not take. False once the stream has failed
    /// (its `failure` says why); the bytes are then dropped.
    @discardableResult
    func write(_ bytes: UnsafeRawBufferPointer) -> Bool
    /// Bytes accepted by `write` but not yet handed to the kernel.
    var queuedBytes: Int { get }
    func pauseReading()
    /// Watches for readability again; bytes already buffered above the socket are offered at once.
    func resumeReading()
    /// Asks the loop to offer a read again after other work, though the socket may be quiet.
    func readAgainSoon()
    /// Ends this side's sending once the queue has drained: FIN for a plain socket, close_notify
    /// then FIN for TLS. Reading goes on.
    func finishWriting()
    /// Why the stream failed, once it has.
    var failure: String? { get }
}
