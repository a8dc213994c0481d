/// Scratch memory one event loop lends to every stream on it. A loop runs one callback at a
/// time and every user leaves the buffers empty before returning, so one set serves all of the
/// loop's connections and an idle connection holds none.
public final class LoopBuffers {
    /// Plaintext on its way between two streams: several TLS records' worth.
    public let plaintext: UnsafeMutableRawBufferPointer
    /// TLS records on their way to a socket, gathered so several leave in one `send`.
    public let staging: StagingBuffer

    public static let plaintextSize = 64 * 1024

    public init() {
        plaintext = .allocate(byteCount: Self.plaintextSize, alignment: 64)
        // Four full records of 16 KiB plus their headers and tags, and room for a handshake flight.
        staging = StagingBuffer(capacity: 96 * 1024)
    }

    deinit { plaintext.deallocate() }
}

/// Bytes gathered for one `send`; empty between callbacks.
public final class StagingBuffer {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public var count = 0

    public init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { base.deallocate() }
}
