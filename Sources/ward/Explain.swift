import ArgumentParser
import Foundation
import WardConfig
import WardIdentity
import WardPolicy

extension WardCommand {
    /// `ward explain`: what the rules decide for one workload and listener, and why.
    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the decision for a SPIFFE ID on a listener, the deciding rule, and why others lost.",
            discussion: "Exit status: 0 allowed, 3 denied (or denied in audit mode), 1 usage or config error.")

        @OptionGroup var options: ConfigOption

        @Option(name: .long, help: "The peer's SPIFFE ID.")
        var from: String

        @Option(name: .long, help: "The listener name.")
        var to: String

        @Option(name: .long, help: "The peer's IP address, for when.source (default: none, so source conditions fail).")
        var addr: String?

        @Option(name: .long, help: "The time of the connection, RFC 3339 (default: now), for when.hours.")
        var at: String?

        @Option(name: .long, help: "The peer SVID's lifetime (default: 1h, SPIRE's default), for when.max_svid_ttl.")
        var ttl: String = "1h"

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        func run() throws {
            let peer: SPIFFEID
            do {
                peer = try SPIFFEID(parsing: from)
            } catch {
                throw usage("--from '\(from)' is not a SPIFFE ID: \(error)")
            }
            guard peer.hasPath else { throw usage("--from '\(from)' names a trust domain, not a workload") }
            var address: IPAddress?
            if let addr {
                guard let parsed = IPAddress(parsing: Substring(addr)) else {
                    throw usage("--addr '\(addr)' is not an IPv4 or IPv6 address")
                }
                address = parsed
            }
            var seconds = Int(Date().timeIntervalSince1970)
            if let at {
                guard let date = ISO8601DateFormatter.parse(at) else {
                    throw usage("--at '\(at)' must be RFC 3339, e.g. 2026-11-22T23:00:00Z")
                }
                seconds = Int(date.timeIntervalSince1970)
            }
            guard let lifetime = DurationParser.parse(ttl)?.components.seconds else {
                throw usage("--ttl '\(ttl)' must be a duration such as 30m or 24h")
            }

            let config: WardConfiguration
            switch ConfigLoader.load(path: options.config) {
            case .success(let loaded): config = loaded
            case .failure(let problems):
                for problem in problems.problems { printError(problem.description) }
                throw ExitCode(1)
            }
            let ruleSet = RuleSet(compiling: config.rules, listeners: config.listeners.map(\.name))
            guard ruleSet.listenerIndex(named: to) != nil else {
                if let entry = config.outbound.first(where: { $0.name == to }) {
                    // Rules decide who may call a listener; an outbound entry decides whom Ward calls.
                    throw usage(
                        "--to '\(to)' is an outbound entry: no rule decides it; the server must be one of its "
                            + "server_id (\(entry.serverIDs.joined(separator: ", ")))")
                }
                throw usage("--to '\(to)' is not a listener (known: \(ruleSet.listenerNames.joined(separator: ", ")))")
            }
            guard config.trustDomains.contains(where: { $0.domain == peer.trustDomain }) else {
                // Such a peer never reaches the rules: its handshake is refused first.
                let detail =
                    "no bundle for trust domain \(peer.trustDomain) in \(options.config): refused at the handshake"
                print(
                    json
                        ? Self.jsonString([
                            "from": from, "to": to, "decision": "refused", "reason": "unknown_trust_domain",
                        ])
                        : TerminalText.escape("\(from) -> \(to): refused: unknown_trust_domain (\(detail))"))
                throw ExitCode(1)
            }
            let context = DecisionContext(
                address: address, minuteOfDay: (seconds % 86_400 + 86_400) % 86_400 / 60,
                svidLifetimeSeconds: lifetime)
            let explanation = ruleSet.explain(peer: peer, listener: to, context: context)
            print(json ? jsonText(explanation) : text(explanation))
            if !explanation.decision.isAllowed { throw ExitCode(3) }
        }

        private func usage(_ message: String) -> ExitCode {
            printError("ward explain: \(message)")
            return ExitCode(1)
        }

        private func verdict(_ decision: Decision) -> String {
            decision.isAllowed ? "allow" : decision.enforced ? "deny" : "deny (audit mode: not enforced, let through)"
        }

        private func text(_ explanation: Explanation) -> String {
            let decision = explanation.decision
            var lines = [
                "\(from) -> \(to): \(verdict(decision))",
                "decided by: \(decision.rule) (\(explanation.decidedAt))",
            ]
            if explanation.matches.isEmpty {
                lines.append("no rule matched: the default applies")
            }
            for match in explanation.matches {
                let rule = match.rule
                let outcome = match.lostBecause.map { "lost: \($0)" } ?? "decided"
                lines.append(
                    "  \(rule.name) (\(rule.location)): \(rule.action.rawValue)"
                        + (rule.action == .deny && rule.mode == .audit ? " [audit]" : "")
                        + ", matched \(match.pattern) (\(match.patternLocation)); \(outcome)")
            }
            return lines.map(TerminalText.escape).joined(separator: "\n")
        }

        private func jsonText(_ explanation: Explanation) -> String {
            let decision = explanation.decision
            let matches: [[String: Any]] = explanation.matches.map { match in
                var entry: [String: Any] = [
                    "rule": match.rule.name, "location": match.rule.location.description,
                    "action": match.rule.action.rawValue, "mode": match.rule.mode.rawValue,
                    "pattern": match.pattern.description, "pattern_location": match.patternLocation.description,
                    "outcome": match.lostBecause == nil ? "decided" : "lost",
                ]
                if let reason = match.lostBecause { entry["reason"] = reason }
                if let failure = match.conditionFailure { entry["condition_failed"] = failure.rawValue }
                return entry
            }
            let object: [String: Any] = [
                "from": from, "to": to, "decision": decision.action.rawValue, "enforced": decision.enforced,
                "lets_through": decision.letsThrough, "rule": decision.rule,
                "location": explanation.decidedAt.description, "matches": matches,
            ]
            return Self.jsonString(object)
        }

        private static func jsonString(_ object: [String: Any]) -> String {
            let data = try! JSONSerialization.data(
                withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data, as: UTF8.self)
        }
    }
}

extension ISO8601DateFormatter {
    /// RFC 3339 with or without fractional seconds.
    static func parse(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
