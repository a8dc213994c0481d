import Foundation
import Testing
import WardObservability

/// A stand-in digest for the pure chain logic: distinct per input, stable.
private func digest(_ data: Data) -> String { String(data.hashValue, radix: 16) + "-\(data.count)" }

@Suite struct LogChainTests {
    func chain(_ bodies: [String]) -> [String] {
        var previous = String(repeating: "0", count: 64)
        return bodies.map { body in
            let line = "{\(body),\"prev\":\"\(previous)\"}"
            previous = digest(Data(line.utf8))
            return line
        }
    }

    func verify(_ lines: [String]) -> LogChain.Verdict {
        LogChain.verify(Data((lines.joined(separator: "\n") + "\n").utf8), sha256: digest)
    }

    @Test func intactChain() {
        let verdict = verify(chain((1...5).map { "\"n\":\($0)" }))
        #expect(verdict.brokenLine == nil && verdict.lines == 5)
    }

    @Test func anEditedBodyNamesItsLine() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines[2] = lines[2].replacingOccurrences(of: "\"n\":3", with: "\"n\":4")
        #expect(verify(lines).brokenLine == 3)
    }

    @Test func anEditedPrevNamesItsLine() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines[3] = lines[3].replacingOccurrences(of: "\"prev\":\"", with: "\"prev\":\"f")
        #expect(verify(lines).brokenLine == 4)
    }

    @Test func aRemovedLineIsDetected() {
        var lines = chain((1...6).map { "\"n\":\($0)" })
        lines.remove(at: 3)
        let verdict = verify(lines)
        #expect(verdict.brokenLine == 3)
        #expect(verdict.message.contains("removed"))
    }

    @Test func unchainedOrBrokenLinesAreReported() {
        #expect(verify(["{\"n\":1}"]).brokenLine == 1)
        #expect(verify(chain(["\"n\":1"]) + ["not json"]).brokenLine == 2)
    }
}
