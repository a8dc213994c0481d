import Foundation
import WardConfig
import WardControl
import WardIdentity
import WardObservability
import WardPolicy
import WardTLS

/// What each fuzz target checks on one input. Lives in the main package so `swift test` builds
/// it; the libFuzzer entry points live in Fuzz/ (scripts/fuzz).
public enum FuzzChecks {
    public static func spiffeID(_ bytes: UnsafeBufferPointer<UInt8>) {
        let text = String(decoding: bytes, as: UTF8.self)
        if let id = try? SPIFFEID(parsing: text) {
            precondition(id.description == text, "an ID must keep its text")
            precondition(id.description.utf8.count <= SPIFFEID.maximumLength)
            precondition((try? TrustDomain(parsing: id.trustDomain.name)) == id.trustDomain)
            let rebuilt = "spiffe://" + id.trustDomain.name + id.path
            precondition(rebuilt == text, "trust domain + path must rebuild the ID")
            for segment in id.segments { precondition(!segment.isEmpty && segment != "." && segment != "..") }
            if id.hasPath, let pattern = try? IdentityPattern(parsing: text) {
                precondition(pattern.isExact && pattern.matches(id), "an ID is a pattern matching itself")
            }
        }
        if let pattern = try? IdentityPattern(parsing: text) {
            precondition(pattern.isCovered(by: pattern), "a pattern covers itself")
        }
    }

    /// A config naming one listener and both trust domains, with the input as the rules file.
    public static func rules(_ bytes: UnsafeBufferPointer<UInt8>) {
        let folder = NSTemporaryDirectory() + "ward-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let config = """
            identity: {cert: c.pem, key: k.pem}
            trust_domains: {example.org: b.pem, partner.org: b.pem}
            listeners: [{name: orders, listen: "127.0.0.1:8443", upstream: "127.0.0.1:8080"}]
            rules: rules.yaml

            """
        guard FileManager.default.createFile(atPath: folder + "/ward.yaml", contents: Data(config.utf8)),
            FileManager.default.createFile(atPath: folder + "/rules.yaml", contents: Data(bytes))
        else { return }
        if case .success(let loaded) = ConfigLoader.load(path: folder + "/ward.yaml") {
            let ruleSet = RuleSet(compiling: loaded.rules, listeners: ["orders"])
            _ = ruleSet.warnings(listenerLocations: [])
            let peer = try! SPIFFEID(parsing: "spiffe://example.org/ns/prod/sa/web")
            let context = DecisionContext(address: nil, minuteOfDay: 0, svidLifetimeSeconds: 3600)
            let decision = ruleSet.decide(peer: peer, listenerIndex: 0, context: context)
            precondition(decision == ruleSet.explain(peer: peer, listener: "orders", context: context).decision)
        }
    }

    /// The input as ward.yaml (listeners, outbound entries and every other key), with an empty
    /// rules file beside it. What loads must hold together: unique names, valid `server_id`
    /// patterns whose trust domains have bundles, loopback listens unless allowed remote.
    public static func config(_ bytes: UnsafeBufferPointer<UInt8>) {
        let folder = NSTemporaryDirectory() + "ward-fuzz-config-\(getpid())"
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: folder + "/ward.yaml", contents: Data(bytes)),
            FileManager.default.createFile(atPath: folder + "/rules.yaml", contents: Data("default: deny\n".utf8))
        else { return }
        guard case .success(let config) = ConfigLoader.load(path: folder + "/ward.yaml") else { return }
        let names = config.listeners.map(\.name) + config.outbound.map(\.name)
        precondition(Set(names).count == names.count, "listener and outbound names are unique")
        precondition(!names.isEmpty, "a config has a listener or an outbound entry")
        let domains = Set(config.trustDomains.map(\.domain))
        for entry in config.outbound {
            precondition(!entry.serverIDs.isEmpty, "server_id names at least one ID")
            for text in entry.serverIDs {
                guard let pattern = try? IdentityPattern(parsing: text) else {
                    preconditionFailure("server_id '\(text)' loaded but does not parse")
                }
                precondition(domains.contains(pattern.trustDomain), "server_id's trust domain has a bundle")
            }
            if !entry.allowRemote, let ip = IPAddress(parsing: Substring(entry.listen.host)) {
                precondition(ip.isLoopback, "a literal non-loopback listen needs allow_remote")
            }
            if let name = entry.serverName { precondition(ConfigLoader.isHostName(name)) }
        }
    }

    /// The input as a bundle (PEM certificates) and as a revocation list file (PEM or DER CRLs).
    public static func pem(_ bytes: UnsafeBufferPointer<UInt8>) {
        if let lists = try? RevocationList.parse(Data(bytes)) {
            for list in lists {
                precondition(!list.sha256Hex.isEmpty, "a parsed CRL encodes again")
                _ = list.issuer
            }
        }
        guard let certificates = try? Certificate.parsePEM(Data(bytes)) else { return }
        for certificate in certificates {
            let leaf = certificate.svidLeaf
            _ = SVIDLeafPolicy(role: .client, maximumLifetimeSeconds: 86_400).identity(of: leaf)
            _ = certificate.sha256Hex
            _ = certificate.serialHex
        }
        if let domain = try? TrustDomain(parsing: "example.org") {
            _ = try? SVIDVerifier(
                bundles: [TrustBundle(trustDomain: domain, authorities: certificates)],
                policy: SVIDLeafPolicy(role: .client, maximumLifetimeSeconds: 86_400))
        }
    }

    /// An admin request head: parsing never traps, a parsed request is well-formed, and what
    /// it parsed, written out again, parses to the same request.
    public static func adminRequest(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard case .complete(let request) = AdminRequest.parse(bytes) else { return }
        precondition(request.method.utf8.allSatisfy { (65...90).contains($0) } && request.target.hasPrefix("/"))
        precondition(request.headers.allSatisfy { $0.name == $0.name.lowercased() && !$0.name.isEmpty })
        var text = "\(request.method) \(request.target) HTTP/1.1\r\n"
        for header in request.headers { text += "\(header.name): \(header.value)\r\n" }
        text += "\r\n"
        precondition(AdminRequest.parse(Array(text.utf8)) == .complete(request), "a parsed head must round-trip")
    }

    /// A chained log: verification never traps, and a verdict names a line inside the file.
    public static func logChain(_ bytes: UnsafeBufferPointer<UInt8>) {
        let verdict = LogChain.verify(
            Data(bytes), sha256: { Digest.sha256Hex($0) }, checkSeal: { _ in .valid })
        if let line = verdict.brokenLine { precondition(line >= 1 && line <= max(1, verdict.lines)) }
    }
}
