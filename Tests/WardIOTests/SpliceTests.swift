import CLibevent
import Foundation
import Glibc
import Testing
import WardIO

/// A splice between two socketpairs on a real libevent loop: the test holds the far ends (the
/// "client" and the "upstream service") and drives them from threads with blocking I/O.
private final class Harness: SpliceDelegate {
    let base: OpaquePointer
    let buffers = LoopBuffers()
    let client: SocketStream
    let upstream: SocketStream
    /// The test's ends: what the client application and the upstream service hold.
    let clientApp: Int32
    var service: Int32
    var splice: Splice!
    var end: Splice.End?
    var movedUp = 0
    var movedDown = 0
    /// The largest queue either stream held: what backpressure bounds.
    var maxQueued = 0

    /// `tcpUpstream`: the upstream leg is a loopback TCP connection (it can be reset).
    init(tcpUpstream: Bool = false) {
        base = event_base_new()!
        var pair: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair)
        clientApp = pair[0]
        _ = fcntl(pair[1], F_SETFL, O_NONBLOCK)
        client = SocketStream(fd: pair[1], base: base)
        if tcpUpstream { pair = tcpPair() } else { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) }
        service = pair[0]
        _ = fcntl(pair[1], F_SETFL, O_NONBLOCK)
        upstream = SocketStream(fd: pair[1], base: base)
        splice = Splice(client: client, upstream: upstream, buffer: buffers.plaintext)
        splice.delegate = self
    }

    deinit {
        client.closeSocket()
        upstream.closeSocket()
        Glibc.close(clientApp)
        if service >= 0 { Glibc.close(service) }
        event_base_free(base)
    }

    func splice(_ splice: Splice, moved count: Int, towardUpstream: Bool) {
        if towardUpstream { movedUp += count } else { movedDown += count }
        maxQueued = max(maxQueued, client.queuedBytes, upstream.queuedBytes)
    }

    func spliceFinished(_ splice: Splice, end: Splice.End) {
        self.end = end
        event_base_loopbreak(base)
    }

    /// Runs the loop until the splice ends or `seconds` pass (a bound, not a wait).
    func runUntilFinished(seconds: Int = 20) {
        let deadline = Date().addingTimeInterval(TimeInterval(seconds))
        while end == nil && Date() < deadline {
            var slice = timeval(tv_sec: 0, tv_usec: 100_000)
            event_base_loopexit(base, &slice)
            event_base_dispatch(base)
        }
    }

    /// Runs the loop for one pass of whatever is ready.
    func runOnce() {
        event_base_loop(base, EVLOOP_NONBLOCK)
    }
}

/// Both ends of one loopback TCP connection: (accepted, connected).
private func tcpPair() -> [Int32] {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(listener, $0, length)
            _ = listen(listener, 1)
            _ = getsockname(listener, $0, &length)
        }
    }
    let connected = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = connect(connected, $0, length) }
    }
    let accepted = accept(listener, nil, nil)
    Glibc.close(listener)
    return [accepted, connected]
}

private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
}

private func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent <= 0 { return }
        offset += sent
    }
}

private func readToEnd(_ fd: Int32) -> [UInt8] {
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if got <= 0 { return result }
        result += chunk[..<got]
    }
}

/// Runs `body` on its own thread; `join` waits for its result.
private final class Worker<T: Sendable>: @unchecked Sendable {
    private var value: T?
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> T) {
        Thread {
            self.value = body()
            self.done.signal()
        }.start()
    }
    func join() -> T {
        done.wait()
        return value!
    }
}

@Suite struct SpliceTests {
    @Test func halfCloseCarriesTheRequestThenTheAnswer() {
        let harness = Harness()
        let request = pattern(3 << 20, seed: 1)
        let answer = pattern(5 << 20, seed: 2)
        let (clientApp, service) = (harness.clientApp, harness.service)
        let sender = Worker {
            writeAll(clientApp, request)
            shutdown(clientApp, Int32(SHUT_WR))
            return readToEnd(clientApp)
        }
        // The service reads the whole request (it ends with the client's FIN), then answers.
        let server = Worker {
            let got = readToEnd(service)
            writeAll(service, answer)
            shutdown(service, Int32(SHUT_WR))
            return got
        }
        harness.splice.start()
        harness.runUntilFinished()
        #expect(harness.end == .finished(first: .client))
        harness.client.closeSocket()
        #expect(server.join() == request)
        #expect(sender.join() == answer)
        #expect(harness.movedUp == request.count)
        #expect(harness.movedDown == answer.count)
    }

    @Test func upstreamFinishingFirstEndsTheSpliceAfterDelivery() {
        let harness = Harness()
        let answer = pattern(2 << 20, seed: 3)
        let (clientApp, service) = (harness.clientApp, harness.service)
        let reader = Worker { readToEnd(clientApp) }
        let server = Worker {
            writeAll(service, answer)
            shutdown(service, Int32(SHUT_WR))
            return 0
        }
        harness.splice.start()
        harness.runUntilFinished()
        _ = server.join()
        #expect(harness.end == .finished(first: .upstream))
        // Everything reached the client's socket before the splice said it was over.
        #expect(harness.client.queuedBytes == 0)
        harness.client.closeSocket()
        #expect(reader.join() == answer)
    }

    @Test func aServiceThatDoesNotReadStopsTheClientInsteadOfGrowingMemory() {
        let harness = Harness()
        let request = pattern(16 << 20, seed: 4)
        let clientApp = harness.clientApp
        let sender = Worker {
            writeAll(clientApp, request)
            shutdown(clientApp, Int32(SHUT_WR))
            return 0
        }
        harness.splice.start()
        // The service reads nothing: after the kernel buffers fill, the splice must stop reading.
        var stalledPasses = 0
        var lastMoved = -1
        for _ in 0..<2000 where stalledPasses < 50 {
            harness.runOnce()
            if harness.movedUp == lastMoved { stalledPasses += 1 } else { stalledPasses = 0 }
            lastMoved = harness.movedUp
            usleep(1000)
        }
        #expect(stalledPasses >= 50)
        #expect(harness.movedUp < request.count)
        // Ward holds at most one batch; the rest waits in the kernel, on the client's side.
        #expect(harness.maxQueued <= LoopBuffers.plaintextSize)
        let service = harness.service
        // The service catches up, sees FIN after the last byte, and finishes too.
        let server = Worker {
            let received = readToEnd(service)
            shutdown(service, Int32(SHUT_WR))
            return received
        }
        harness.runUntilFinished()
        _ = sender.join()
        #expect(harness.end == .finished(first: .client))
        #expect(server.join() == request)
    }

    @Test func aServiceResetFailsTheSplice() {
        let harness = Harness(tcpUpstream: true)
        // A reset, not a FIN: SO_LINGER with a zero timeout, then close.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(harness.service, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        Glibc.close(harness.service)
        harness.service = -1
        let clientApp = harness.clientApp
        let sender = Worker {
            writeAll(clientApp, pattern(1 << 20, seed: 5))
            return 0
        }
        harness.splice.start()
        harness.runUntilFinished()
        guard case .failed(let side, let detail)? = harness.end else {
            Issue.record("expected a failure, got \(String(describing: harness.end))")
            return
        }
        #expect(side == .upstream)
        #expect(!detail.isEmpty)
        harness.client.closeSocket()
        _ = sender.join()
    }
}
