import Testing
import WardObservability

@Suite struct MetricsTests {
    @Test func sumsWorkersAndRendersPrometheusText() {
        let registry = MetricsRegistry(
            listenerNames: ["orders", "admin"], reasonNames: ["expired", "tls_error"], workers: 2)
        registry.workers[0].connection(listener: 0, .allow)
        registry.workers[1].connection(listener: 0, .allow)
        registry.workers[1].connection(listener: 1, .auditDeny)
        registry.workers[0].handshakeError(listener: 1, reason: 1)
        registry.workers[0].active(listener: 0, 1)
        registry.workers[1].active(listener: 0, 1)
        registry.workers[1].active(listener: 0, -1)
        registry.workers[0].bytes(listener: 0, .incoming, 100)
        registry.workers[1].bytes(listener: 0, .outgoing, 7)
        registry.workers[0].handshakeDuration(seconds: 0.003)
        registry.workers[1].handshakeDuration(seconds: 20)
        registry.reload(ok: true)
        registry.reload(ok: false)
        let text = registry.render(.init(generation: 4, svidExpiry: 1_800_000_000, logDropped: 3))
        let lines = Set(text.split(separator: "\n").map(String.init))
        for expected in [
            "ward_connections_total{listener=\"orders\",decision=\"allow\"} 2",
            "ward_connections_total{listener=\"admin\",decision=\"audit_deny\"} 1",
            "ward_connections_total{listener=\"admin\",decision=\"deny\"} 0",
            "ward_handshake_errors_total{listener=\"admin\",reason=\"tls_error\"} 1",
            "ward_active_connections{listener=\"orders\"} 1",
            "ward_bytes_total{listener=\"orders\",direction=\"in\"} 100",
            "ward_bytes_total{listener=\"orders\",direction=\"out\"} 7",
            "ward_reloads_total{result=\"ok\"} 1", "ward_reloads_total{result=\"error\"} 1",
            "ward_rules_generation 4", "ward_svid_expiry_timestamp_seconds 1800000000", "ward_log_dropped_total 3",
            "ward_handshake_duration_seconds_bucket{le=\"0.0025\"} 0",
            "ward_handshake_duration_seconds_bucket{le=\"0.005\"} 1",
            "ward_handshake_duration_seconds_bucket{le=\"10\"} 1",
            "ward_handshake_duration_seconds_bucket{le=\"+Inf\"} 2",
            "ward_handshake_duration_seconds_sum 20.003", "ward_handshake_duration_seconds_count 2",
            "# TYPE ward_peer_svid_remaining_seconds histogram",
        ] {
            #expect(lines.contains(expected), "\(expected)")
        }
        #expect(!text.contains("reason=\"expired\""))
    }
}
