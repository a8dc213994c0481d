import ArgumentParser
import Foundation
import Logging
import WardConfig
import WardControl
import WardCore

@main
struct WardCommand: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "ward",
        abstract: "An mTLS reverse proxy that enforces SPIFFE workload identity.",
        version: version,
        subcommands: [Run.self, Check.self, Explain.self, Reload.self, Logs.self, Audit.self, Suggest.self]
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path to ward.yaml.")
    var config: String = "conf/ward.yaml"
}

extension WardCommand {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the proxy in the foreground.")

        @OptionGroup var options: ConfigOption

        func run() throws {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            let logger = Logger(label: "ward")
            let snapshot: RuntimeSnapshot
            switch SnapshotBuilder.load(configPath: options.config) {
            case .success(let loaded): snapshot = loaded
            case .failure(let problems):
                for problem in problems.problems { printError("ward: \(problem)") }
                throw ExitCode(1)
            }
            do {
                try WardServer(snapshot: snapshot, logger: logger).run()
            } catch {
                printError("ward: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load the config, rules, certificates and keys; print problems as FILE:LINE: message.")

        @OptionGroup var options: ConfigOption

        func run() throws {
            switch SnapshotBuilder.load(configPath: options.config) {
            case .success(let snapshot):
                let config = snapshot.config
                // Warnings do not fail the check: they are legal rules that are likely mistakes.
                let warnings =
                    FilePolicy.warnings(snapshot)
                    + snapshot.ruleSet.warnings(listenerLocations: config.listeners.map(\.location)).map(\.description)
                for warning in warnings { print(TerminalText.escape(warning)) }
                print(
                    "\(options.config): OK: \(config.listeners.count) listener(s), "
                        + (config.outbound.isEmpty ? "" : "\(config.outbound.count) outbound, ")
                        + "\(config.trustDomains.count) trust domain(s), \(snapshot.ruleSet.ruleCount) rule(s), "
                        + "default \(config.rules.defaultAction.rawValue), identity \(snapshot.ownID)"
                        + (warnings.isEmpty ? "" : ", \(warnings.count) warning(s)"))
            case .failure(let problems):
                for problem in problems.problems { print(TerminalText.escape(problem.description)) }
                throw ExitCode(1)
            }
        }
    }
}

/// Writes an error to stderr; what it quotes (arguments, file contents) cannot drive the terminal.
func printError(_ text: String) {
    let safe = text.split(separator: "\n", omittingEmptySubsequences: false).map { TerminalText.escape(String($0)) }
    FileHandle.standardError.write(Data((safe.joined(separator: "\n") + "\n").utf8))
}
