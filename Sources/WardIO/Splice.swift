/// Told what a splice moved and when it ended; runs on the loop.
public protocol SpliceDelegate: AnyObject {
    /// `count` bytes went from the client to the upstream (`towardUpstream`) or back.
    func splice(_ splice: Splice, moved count: Int, towardUpstream: Bool)
    /// Forwarding is over: both sides finished, the upstream finished and everything it sent
    /// reached the client's socket, or one side failed. The delegate closes both streams.
    func spliceFinished(_ splice: Splice, end: Splice.End)
}

/// Two-way forwarding between a client and an upstream stream, with backpressure and half-close.
///
/// A direction reads only while the other stream has nothing queued: a slow reader stops its
/// source instead of growing Ward's memory (the kernel's socket buffers do the buffering).
/// Reads fill the loop's scratch buffer (several TLS records) before one write, so records
/// arrive in batches and leave in one system call.
///
/// The client finishing (FIN or close_notify) half-closes the upstream once its bytes are out,
/// and the answer still flows back. The upstream finishing ends the splice once everything it
/// sent has reached the client's socket.
public final class Splice: ByteStreamDelegate {
    public enum Side: Sendable {
        case client
        case upstream
    }

    public enum End: Equatable, Sendable {
        /// Both sides or the upstream finished cleanly; `first` is the side that finished first.
        case finished(first: Side)
        case failed(side: Side, detail: String)
    }

    /// Reads per wakeup before yielding to the loop's other connections.
    static let batchesPerWakeup = 16
    /// A stream stops being read while this much of its own output waits: reading a TLS peer
    /// can make Ward answer it (KeyUpdate, alerts), and a peer that never reads must not make
    /// those answers pile up. Above one batch, so forwarding alone never reaches it.
    public static let maxOwnQueue = 2 * LoopBuffers.plaintextSize

    public let client: any ByteStream
    public let upstream: any ByteStream
    private let buffer: UnsafeMutableRawBufferPointer
    public weak var delegate: (any SpliceDelegate)?
    public private(set) var clientDone = false
    public private(set) var upstreamDone = false
    private var clientPaused = false
    private var upstreamPaused = false
    private var firstCloser: Side?
    public private(set) var isFinished = false

    /// `buffer` is scratch memory of the loop: empty again whenever a callback returns.
    public init(client: any ByteStream, upstream: any ByteStream, buffer: UnsafeMutableRawBufferPointer) {
        self.client = client
        self.upstream = upstream
        self.buffer = buffer
    }

    /// Starts forwarding both ways; bytes the client sent early are passed on at once.
    public func start() {
        client.delegate = self
        upstream.delegate = self
        upstream.resumeReading()
        client.resumeReading()
        pump(from: .client)
    }

    public func streamReadable(_ stream: any ByteStream) {
        pump(from: stream === client ? .client : .upstream)
    }

    public func streamDrained(_ stream: any ByteStream) {
        guard !isFinished else { return }
        let side: Side = stream === client ? .client : .upstream
        if let failure = stream.failure {
            finish(.failed(side: side, detail: failure))
            return
        }
        if side == .client && upstreamDone && client.queuedBytes == 0 {
            finish(.finished(first: firstCloser ?? .upstream))
            return
        }
        // A drained stream may unblock either direction: the one writing to it (its queue was
        // in the way) and its own reading (its own answers were).
        resumeIfReady(.client)
        resumeIfReady(.upstream)
    }

    private func resumeIfReady(_ side: Side) {
        guard !isFinished, side == .client ? clientPaused && !clientDone : upstreamPaused && !upstreamDone else {
            return
        }
        let (source, target) = side == .client ? (client, upstream) : (upstream, client)
        guard target.queuedBytes == 0, source.queuedBytes <= Self.maxOwnQueue else { return }
        if side == .client { clientPaused = false } else { upstreamPaused = false }
        source.resumeReading()
        pump(from: side)
    }

    private func pump(from side: Side) {
        let (source, target) = side == .client ? (client, upstream) : (upstream, client)
        var batches = 0
        while !isFinished {
            if side == .client ? clientDone : upstreamDone { return }
            guard target.queuedBytes == 0, source.queuedBytes <= Self.maxOwnQueue else {
                source.pauseReading()
                if side == .client { clientPaused = true } else { upstreamPaused = true }
                return
            }
            var filled = 0
            var outcome = ReadResult.wouldBlock
            var more = false
            while filled < buffer.count {
                let result = source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                if case .bytes(let count, let hasMore) = result {
                    filled += count
                    more = hasMore
                    if hasMore { continue }
                    break
                }
                outcome = result
                more = false
                break
            }
            if filled > 0 {
                if !target.write(UnsafeRawBufferPointer(rebasing: buffer[..<filled])) {
                    let other: Side = side == .client ? .upstream : .client
                    finish(.failed(side: other, detail: target.failure ?? "write failed"))
                    return
                }
                delegate?.splice(self, moved: filled, towardUpstream: side == .client)
            }
            switch outcome {
            case .end:
                sourceEnded(side)
                return
            case .failed(let detail):
                finish(.failed(side: side, detail: detail))
                return
            case .wouldBlock, .bytes:
                break
            }
            guard more else { return }
            batches += 1
            if batches >= Self.batchesPerWakeup {
                source.readAgainSoon()
                return
            }
        }
    }

    private func sourceEnded(_ side: Side) {
        if firstCloser == nil { firstCloser = side }
        switch side {
        case .client:
            clientDone = true
            client.pauseReading()
            upstream.finishWriting()
            if upstreamDone && client.queuedBytes == 0 { finish(.finished(first: firstCloser ?? .client)) }
        case .upstream:
            upstreamDone = true
            upstream.pauseReading()
            if client.queuedBytes == 0 { finish(.finished(first: firstCloser ?? .upstream)) }
        }
    }

    private func finish(_ end: End) {
        guard !isFinished else { return }
        isFinished = true
        client.pauseReading()
        upstream.pauseReading()
        delegate?.spliceFinished(self, end: end)
    }
}
