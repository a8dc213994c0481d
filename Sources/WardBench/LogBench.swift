import Foundation
import WardCore

/// Connection-log writer throughput: two producer threads (as two workers would) append
/// realistic `close` lines as fast as they can; reports lines per second actually written.
enum LogBench {
    static let line =
        #"{"ts":"2026-11-22T23:03:41.307Z","event":"close","conn":1,"listener":"orders","peer_addr":"127.0.0.1:36224","peer_id":"spiffe://example.org/ns/prod/sa/web","trust_domain":"example.org","rule":"web-to-orders","tls_version":"TLSv1.3","cipher":"TLS_AES_128_GCM_SHA256","cert_serial":"5A363B250F868E58","cert_sha256":"3ede1746a57fd0e9845aaf1eb5fb0c9fd1c59e64be80eae6f974c27cd7abb6dd","cert_not_after":"2026-11-23T23:03:40Z","bytes_in":78,"bytes_out":215,"duration_ms":12,"close_cause":"upstream"}"#
        + "\n"

    static func run(path: String) {
        for chain in [false, true] {
            unlink(path)
            let log = try! ConnectionLog(path: path, chain: chain, capacity: ConnectionLog.defaultCapacity)
            let perThread = 500_000
            let started = DispatchTime.now().uptimeNanoseconds
            let group = DispatchGroup()
            for _ in 0..<2 {
                group.enter()
                Thread {
                    for _ in 0..<perThread { log.append(line) }
                    group.leave()
                }.start()
            }
            group.wait()
            log.close()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            let written = (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").count ?? 0
            print(
                String(
                    format: "log_chain: %@  offered %d lines  written %d  dropped %lld  %.0f lines/s written",
                    chain ? "true " : "false", 2 * perThread, written, log.dropped, Double(written) / seconds))
        }
        unlink(path)
    }
}
