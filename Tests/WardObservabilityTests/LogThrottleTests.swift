import Testing
import WardObservability
import WardPolicy

@Suite struct LogThrottleTests {
    let a = IPAddress(ipv4: (127, 0, 0, 1))
    let b = IPAddress(ipv4: (127, 0, 0, 2))

    @Test func eachSourceGetsItsLinesThenIsCounted() {
        var throttle = LogThrottle(linesPerWindow: 2, linesPerWindowOverall: 100, windowMilliseconds: 1000)
        let first = (0..<5).map { _ in throttle.admit(a, reason: "tls_error", now: 10) }
        #expect(first == [true, true, false, false, false])
        let other = throttle.admit(b, reason: "tls_error", now: 10)
        #expect(other)
        let early = throttle.drain(now: 500)
        #expect(early.isEmpty)
        let reports = throttle.drain(now: 1010)
        #expect(reports == [.init(source: a, count: 3, reasons: ["tls_error": 3])])
        #expect(throttle.isEmpty)
        let again = throttle.admit(a, reason: "tls_error", now: 1020)
        #expect(again)
    }

    @Test func manySourcesShareAnOverallBudget() {
        var throttle = LogThrottle(linesPerWindow: 5, linesPerWindowOverall: 3, windowMilliseconds: 1000)
        let sources = (1...6).map { IPAddress(ipv4: (127, 0, 1, UInt8($0))) }
        let admitted = sources.map { throttle.admit($0, reason: "no_client_cert", now: 0) }
        #expect(admitted == [true, true, true, false, false, false])
        let reports = throttle.drain(now: 1000)
        #expect(reports == [.init(source: nil, count: 3, reasons: ["no_client_cert": 3])])
        let next = throttle.admit(sources[5], reason: "no_client_cert", now: 1000)
        #expect(next)
    }
}
