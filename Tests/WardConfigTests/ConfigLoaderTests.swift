import Foundation
import Testing
import WardConfig
import WardPolicy

/// Config and rules errors, each reported as FILE:LINE with a message naming the problem.
@Suite struct ConfigLoaderTests {
    let folder: String

    init() throws {
        folder = NSTemporaryDirectory() + "ward-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    static let validConfig = """
        identity:
          cert: certs/svid.pem
          key: certs/svid.key
        trust_domains:
          example.org: certs/example.org.pem
          partner.org: /etc/partner.pem
        listeners:
          - name: orders
            listen: 127.0.0.1:8443
            upstream: 127.0.0.1:8080
          - name: admin
            listen: "[::1]:9443"
            upstream: localhost:9090
        rules: rules.yaml
        log: logs/connections.log
        workers: 3
        handshake_timeout: 500ms
        idle_timeout: 5m

        """

    static let validRules = """
        default: deny
        rules:
          - name: web-to-orders
            action: allow
            from: [spiffe://example.org/ns/prod/sa/web]
            to: [orders]
          - name: no-partner
            action: deny
            from:
              - spiffe://partner.org/ns/prod/sa/billing
            to: "*"

        """

    func write(config: String = validConfig, rules: String = validRules) throws -> String {
        let path = folder + "/ward.yaml"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        try rules.write(toFile: folder + "/rules.yaml", atomically: true, encoding: .utf8)
        return path
    }

    func problems(config: String = validConfig, rules: String = validRules) throws -> [String] {
        switch ConfigLoader.load(path: try write(config: config, rules: rules)) {
        case .success: return []
        case .failure(let failure): return failure.problems.map(\.description)
        }
    }

    @Test func loadsAValidConfig() throws {
        let config = try ConfigLoader.load(path: try write()).get()
        #expect(config.identityCert.path == folder + "/certs/svid.pem")
        #expect(config.trustDomains.map(\.domain.name) == ["example.org", "partner.org"])
        #expect(config.trustDomains[1].bundle.path == "/etc/partner.pem")
        #expect(config.listeners.map(\.name) == ["orders", "admin"])
        #expect(config.listeners[1].listen == HostPort(host: "::1", port: 9443))
        #expect(config.logPath == folder + "/logs/connections.log")
        #expect(config.workers == 3)
        #expect(config.handshakeTimeout == .milliseconds(500))
        #expect(config.idleTimeout == .seconds(300))
        #expect(config.maxSVIDLifetime == .seconds(86_400))
        #expect(config.rules.defaultAction == .deny)
        #expect(config.rules.rules.map(\.name) == ["web-to-orders", "no-partner"])
        #expect(config.rules.rules[1].to == .all)
    }

    @Test func unknownKeyIsReportedWithItsLine() throws {
        let config = Self.validConfig.replacingOccurrences(of: "workers: 3", with: "wrokers: 3")
        #expect(
            try problems(config: config) == [
                "\(folder)/ward.yaml:16: unknown key 'wrokers' in config (valid: admin, admin_allow_remote, crls, group, handshake_timeout, identity, idle_timeout, listeners, log, log_chain, log_checkpoint_interval, log_checkpoint_lines, max_cert_size, max_chain_depth, max_connections, max_file_size, max_svid_lifetime, outbound, peer_expiry, resumption, rules, security_level, svid_min_remaining, trust_domains, upstream_connect_timeout, user, workers)"
            ])
    }

    @Test func missingKeyIsReported() throws {
        let config = Self.validConfig.replacingOccurrences(of: "  key: certs/svid.key\n", with: "")
        let found = try problems(config: config)
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("\(folder)/ward.yaml:2: identity is missing required key 'key'") == true)
    }

    @Test func badYAMLNamesTheLine() throws {
        let found = try problems(config: "identity:\n  cert: [unclosed\nlisteners: x\n")
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("\(folder)/ward.yaml:2: invalid YAML") == true)
    }

    @Test func badValuesAreEachReported() throws {
        let config = Self.validConfig
            .replacingOccurrences(of: "listen: 127.0.0.1:8443", with: "listen: 127.0.0.1")
            .replacingOccurrences(of: "workers: 3", with: "workers: lots")
            .replacingOccurrences(of: "idle_timeout: 5m", with: "idle_timeout: forever")
            .replacingOccurrences(of: "Example.org", with: "x")
        let found = try problems(config: config)
        #expect(found.contains { $0.hasPrefix("\(folder)/ward.yaml:9: listen '127.0.0.1' must be HOST:PORT") })
        #expect(found.contains("\(folder)/ward.yaml:16: workers must be 'auto' or a number from 1 to 256"))
        #expect(found.contains("\(folder)/ward.yaml:18: idle_timeout must be a duration such as 500ms, 10s, 5m or 1h"))
    }

    @Test func duplicateListenerName() throws {
        let config = Self.validConfig.replacingOccurrences(of: "name: admin", with: "name: orders")
        #expect(
            try problems(config: config) == [
                "\(folder)/ward.yaml:11: duplicate listener name 'orders' (first at line 8)"
            ])
    }

    @Test func invalidTrustDomainKey() throws {
        let config = Self.validConfig.replacingOccurrences(of: "  partner.org:", with: "  Partner.org:")
        let found = try problems(config: config)
        #expect(found.first?.hasPrefix("\(folder)/ward.yaml:6: invalid trust domain 'Partner.org'") == true)
    }

    @Test func unreadableRulesFile() throws {
        let path = try write()
        try FileManager.default.removeItem(atPath: folder + "/rules.yaml")
        guard case .failure(let failure) = ConfigLoader.load(path: path) else {
            Issue.record("loaded without a rules file")
            return
        }
        #expect(failure.problems.map(\.description) == ["\(folder)/rules.yaml: cannot read: No such file or directory"])
    }

    @Test func missingConfigFile() {
        guard case .failure(let failure) = ConfigLoader.load(path: folder + "/absent.yaml") else {
            Issue.record("loaded a missing file")
            return
        }
        #expect(
            failure.problems.map(\.description) == ["\(folder)/absent.yaml: cannot read: No such file or directory"])
    }

    @Test func invalidSPIFFEIDInRuleNamesItsLine() throws {
        let rules = Self.validRules.replacingOccurrences(of: "sa/billing", with: "sa/billing/")
        #expect(
            try problems(rules: rules) == [
                "\(folder)/rules.yaml:10: invalid pattern 'spiffe://partner.org/ns/prod/sa/billing/': path may not end with \"/\""
            ])
    }

    @Test func unknownListenerInRule() throws {
        let rules = Self.validRules.replacingOccurrences(of: "to: [orders]", with: "to: [orders, payments]")
        #expect(
            try problems(rules: rules) == ["\(folder)/rules.yaml:6: unknown listener 'payments' (known: admin, orders)"]
        )
    }

    @Test func duplicateRuleName() throws {
        let rules = Self.validRules.replacingOccurrences(of: "name: no-partner", with: "name: web-to-orders")
        #expect(
            try problems(rules: rules) == [
                "\(folder)/rules.yaml:7: duplicate rule name 'web-to-orders' (first at line 3)"
            ])
    }

    @Test func unconfiguredTrustDomainInRule() throws {
        let rules = Self.validRules.replacingOccurrences(of: "spiffe://partner.org", with: "spiffe://other.org")
        #expect(
            try problems(rules: rules) == [
                "\(folder)/rules.yaml:10: trust domain 'other.org' of 'spiffe://other.org/ns/prod/sa/billing' is not in trust_domains"
            ])
    }

    @Test func badActionAndUnknownRuleKey() throws {
        let rules = Self.validRules
            .replacingOccurrences(of: "action: allow", with: "action: permit")
            .replacingOccurrences(of: "default: deny", with: "default: deny\nmodes: audit")
        let found = try problems(rules: rules)
        #expect(found.contains("\(folder)/rules.yaml:5: action must be 'allow' or 'deny'"))
        #expect(found.contains { $0.hasPrefix("\(folder)/rules.yaml:2: unknown key 'modes' in rules file") })
    }

    @Test func patternsConditionsAndModesLoad() throws {
        let rules = """
            mode: audit
            rules:
              - name: prod
                action: deny
                mode: enforce
                from: [spiffe://example.org/ns/prod/**, spiffe://example.org/ns/*/sa/web]
                to: [orders]
                when:
                  source: [10.0.0.0/8, "2001:db8::/32"]
                  hours: "22:00-06:00"
                  max_svid_ttl: 1h

            """
        let config = try ConfigLoader.load(path: try write(rules: rules)).get()
        #expect(config.rules.mode == .audit)
        let rule = try #require(config.rules.rules.first)
        #expect(rule.mode == .enforce)
        #expect(
            rule.from.map(\.description) == ["spiffe://example.org/ns/prod/**", "spiffe://example.org/ns/*/sa/web"])
        #expect(rule.fromLocations.map(\.line) == [6, 6])
        #expect(rule.conditions.sources.map(\.description) == ["10.0.0.0/8", "2001:db8::/32"])
        #expect(rule.conditions.hours?.description == "22:00-06:00")
        #expect(rule.conditions.maxSVIDLifetimeSeconds == 3600)
        #expect(rule.location == SourceLocation(file: folder + "/rules.yaml", line: 3))
    }

    @Test func badPatternsAndConditionsNameTheirLines() throws {
        let rules = """
            mode: strict
            rules:
              - name: a
                action: allow
                mode: maybe
                from:
                  - spiffe://example.org/ns/**/web
                  - spiffe://example.org/ns/we*
                  - spiffe://*.org/x
                to: [orders]
                when:
                  source: [10.0.0.0/33]
                  hours: "25:00-01:00"
                  max_svid_ttl: soon
                  weekday: monday

            """
        let found = Set(try problems(rules: rules))
        let file = folder + "/rules.yaml"
        #expect(found.contains("\(file):1: mode must be 'enforce' or 'audit'"))
        #expect(found.contains("\(file):5: mode must be 'enforce' or 'audit'"))
        #expect(
            found.contains(
                "\(file):7: invalid pattern 'spiffe://example.org/ns/**/web': '**' is allowed only as the last segment")
        )
        #expect(
            found.contains(
                "\(file):8: invalid pattern 'spiffe://example.org/ns/we*': 'we*': a wildcard must be a whole segment ('*' or '**'), not part of one"
            ))
        #expect(
            found.contains(
                "\(file):9: invalid pattern 'spiffe://*.org/x': trust domain may hold only a-z 0-9 . - _ (found \"*\")")
        )
        #expect(
            found.contains { $0.hasPrefix("\(file):12: source '10.0.0.0/33' must be an IPv4 or IPv6 address or CIDR") })
        #expect(found.contains { $0.hasPrefix("\(file):13: hours must be \"HH:MM-HH:MM\" in UTC") })
        #expect(found.contains("\(file):14: max_svid_ttl must be a duration such as 30m or 24h"))
        #expect(found.contains { $0.hasPrefix("\(file):15: unknown key 'weekday' in when") })
        #expect(found.count == 9)
    }

    static let outboundOnly = """
        identity: {cert: svid.pem, key: svid.key}
        trust_domains:
          example.org: example.org.pem
        outbound:
          - name: orders-api
            listen: 127.0.0.1:9001
            target: orders.internal:8443
            server_id: [spiffe://example.org/ns/prod/sa/orders, "spiffe://example.org/ns/prod/*"]
            server_name: orders.internal

        """

    @Test func configWithOnlyOutboundNeedsNoListenersOrRules() throws {
        let config = try ConfigLoader.load(path: try write(config: Self.outboundOnly)).get()
        #expect(config.listeners.isEmpty)
        #expect(config.rulesFile == nil)
        #expect(config.outbound.map(\.name) == ["orders-api"])
        #expect(config.outbound[0].target == HostPort(host: "orders.internal", port: 8443))
        #expect(config.outbound[0].serverIDs.count == 2)
        #expect(config.outbound[0].serverName == "orders.internal")
        #expect(config.outbound[0].allowRemote == false)
        #expect(config.watchedFiles.count == 4)
    }

    @Test func configWithNeitherListenersNorOutboundIsRefused() throws {
        let config = Self.outboundOnly.components(separatedBy: "outbound:")[0]
        let found = try problems(config: config)
        #expect(found == ["\(folder)/ward.yaml:1: config is missing required key 'listeners'"])
    }

    @Test func outboundProblemsNameTheirLines() throws {
        let config = """
            identity: {cert: svid.pem, key: svid.key}
            trust_domains:
              example.org: example.org.pem
            listeners:
              - {name: orders, listen: 127.0.0.1:8443, upstream: 127.0.0.1:8080}
            rules: rules.yaml
            outbound:
              - name: orders
                listen: 10.0.0.5:9001
                target: orders.internal
                server_id: [spiffe://example.org/ns/*x]
                server_name: "bad name"
                colour: blue
              - name: ok-remote
                listen: 10.0.0.5:9002
                allow_remote: true
                target: orders.internal:8443
                server_id: spiffe://partner.org/ns/prod/sa/x
              - name: orders
                listen: 127.0.0.1:9003
                target: a:1
                server_id: []

            """
        let found = try problems(config: config)
        let file = "\(folder)/ward.yaml"
        #expect(found.contains { $0.hasPrefix("\(file):10: target 'orders.internal' must be HOST:PORT") })
        #expect(
            found.contains {
                $0.hasPrefix("\(file):11: server_id 'spiffe://example.org/ns/*x': 'x*'")
                    || $0.hasPrefix("\(file):11: server_id 'spiffe://example.org/ns/*x'")
            })
        #expect(found.contains { $0.hasPrefix("\(file):12: server_name 'bad name' must be a DNS name") })
        #expect(found.contains { $0.hasPrefix("\(file):13: unknown key 'colour' in outbound entry") })
        #expect(
            found.contains(
                "\(file):18: server_id 'spiffe://partner.org/ns/prod/sa/x': trust domain partner.org has no bundle in trust_domains"
            ))
        #expect(found.contains("\(file):22: server_id must name at least one SPIFFE ID or pattern"))
        #expect(found.count == 7, "\(found.joined(separator: "\n"))")
    }

    @Test func outboundNamesAreUniqueAcrossListeners() throws {
        let config =
            Self.validConfig + """
                outbound:
                  - name: orders
                    listen: 127.0.0.1:9001
                    target: orders.internal:8443
                    server_id: [spiffe://example.org/ns/prod/sa/orders]
                  - name: remote
                    listen: 192.0.2.1:9001
                    target: orders.internal:8443
                    server_id: [spiffe://example.org/ns/prod/sa/orders]

                """
        let found = try problems(config: config)
        let file = "\(folder)/ward.yaml"
        #expect(
            found == [
                "\(file):25: listen '192.0.2.1:9001' is not a loopback address; set allow_remote: true on the entry to allow it",
                "\(file):20: duplicate name 'orders' (first at line 8): listener and outbound names must be unique",
            ])
    }

    @Test func serverNamesAreDNSNames() {
        for good in ["orders.internal", "a", "x-1.example.org"] { #expect(ConfigLoader.isHostName(good), "\(good)") }
        for bad in ["", "-a", "a..b", "a b", "a_b", String(repeating: "a", count: 64), "10.0.0.1:80"] {
            #expect(!ConfigLoader.isHostName(bad), "\(bad)")
        }
    }

    @Test func parsesHostPorts() {
        #expect(HostPort(parsing: "127.0.0.1:80") == HostPort(host: "127.0.0.1", port: 80))
        #expect(HostPort(parsing: "[::1]:443") == HostPort(host: "::1", port: 443))
        #expect(HostPort(parsing: "localhost:8080") == HostPort(host: "localhost", port: 8080))
        for bad in ["127.0.0.1", ":80", "host:0", "host:65536", "::1:80", "[::1]80", "host:http"] {
            #expect(HostPort(parsing: bad) == nil, "\(bad)")
        }
    }
}
