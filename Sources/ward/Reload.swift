import ArgumentParser
import Foundation
import WardConfig
import WardControl
import WardCore

extension WardCommand {
    /// `ward reload`: asks a running Ward to reload, and reports the outcome.
    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Reload a running Ward's config, rules, bundles and own SVID (like SIGHUP).",
            discussion: "Exit status: 0 reloaded (or nothing changed), 1 the reload was refused or Ward is unreachable."
        )

        @OptionGroup var options: ConfigOption

        @Option(
            name: .long, help: "Admin endpoint: a Unix socket path or loopback HOST:PORT (default: admin: in --config)."
        )
        var admin: String?

        func run() throws {
            let address: AdminAddress
            if let admin {
                guard let parsed = AdminAddress(parsing: admin, relativeTo: "") else {
                    printError("ward reload: --admin '\(admin)' must be a Unix socket path or HOST:PORT")
                    throw ExitCode(1)
                }
                address = parsed
            } else {
                address = ConfigLoader.adminAddress(configPath: options.config) ?? .unix(path: AdminAddress.defaultPath)
            }
            let response: AdminClient.Response
            do {
                response = try AdminClient.request("POST", "/reload", to: address)
            } catch {
                printError("ward reload: \(error)")
                throw ExitCode(1)
            }
            let object = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any] ?? [:]
            guard response.status == 200, object["ok"] as? Bool == true else {
                let message = object["error"] as? String ?? "HTTP \(response.status): \(response.body)"
                printError("ward reload: \(message)")
                throw ExitCode(1)
            }
            let generation = object["generation"] as? Int ?? 0
            let rules = object["rules"] as? Int ?? 0
            let changed = object["changed"] as? Bool ?? true
            print(
                changed
                    ? "reloaded: generation \(generation), \(rules) rule(s), sha256 \(object["sha256"] as? String ?? "")"
                    : "unchanged: generation \(generation)")
        }
    }
}
