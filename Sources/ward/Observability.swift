import ArgumentParser
import Foundation
import WardConfig
import WardObservability
import WardPolicy
import WardSystem
import WardTLS

extension WardCommand {
    struct Logs: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the connection log for people: aligned, coloured on a terminal, filterable, followable.")

        @Argument(help: "The log file (default: log: of --config).")
        var file: String?

        @OptionGroup var options: ConfigOption

        @Flag(name: .long, help: "Keep reading as lines arrive, across rotation (like tail -F).")
        var follow = false

        @Option(name: .long, help: "Only this event (allow, deny, handshake_error, close, revoke, reload); repeatable.")
        var event: [String] = []

        @Option(name: .long, help: "Only peers matching this SPIFFE ID or pattern (rules grammar: *, **).")
        var peer: String?

        @Option(name: .long, help: "Only this listener.")
        var listener: String?

        @Flag(name: .long, help: "Print the JSON records as they are.")
        var json = false

        func run() throws {
            var filter = LogFilter(events: Set(event), listener: listener)
            if let peer {
                do {
                    filter.peer = try IdentityPattern(parsing: peer)
                } catch {
                    printError("ward logs: --peer '\(peer)': \(error)")
                    throw ExitCode(1)
                }
            }
            guard let path = file ?? logPath() else {
                printError("ward logs: no log file given and none found in \(options.config)")
                throw ExitCode(1)
            }
            var status = stat()
            if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG {
                printError("ward logs: \(path): not a regular file")
                throw ExitCode(1)
            }
            let color = !json && isatty(STDOUT_FILENO) == 1
            let reader = LogTail(path: path)
            repeat {
                guard let lines = reader.readAvailable() else {
                    if !follow {
                        printError("ward logs: \(path): cannot read")
                        throw ExitCode(1)
                    }
                    usleep(200_000)
                    continue
                }
                for line in lines {
                    guard let record = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any],
                        filter.accepts(record)
                    else { continue }
                    print(json ? String(decoding: line, as: UTF8.self) : LogFormatter.human(record, color: color))
                }
                fflush(nil)  // every stream: `stdout` itself is not concurrency-safe to name
                if follow, !reader.hasMore { usleep(200_000) }
            } while follow || reader.hasMore
        }

        private func logPath() -> String? {
            guard case .success(let config) = ConfigLoader.load(path: options.config), config.logPath != "-" else {
                return nil
            }
            return config.logPath
        }
    }

    struct Suggest: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write rules that allow exactly the traffic a log recorded (allow and audit-mode deny events).")

        @Option(name: .customLong("from-log"), help: "The connection log to learn from.")
        var fromLog: String

        @Option(name: .customLong("min-count"), help: "Only pairs seen at least this often.")
        var minCount = 1

        @Flag(name: .long, help: "Replace sibling workloads with the same listeners by parent/*.")
        var generalize = false

        func run() throws {
            guard let data = try? RegularFile.read(fromLog, limit: 1 << 30) else {
                printError("ward suggest: \(fromLog): cannot read")
                throw ExitCode(1)
            }
            var suggester = RuleSuggester(minimumCount: minCount, generalize: generalize)
            for line in data.split(separator: UInt8(ascii: "\n")) {
                if let record = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] {
                    suggester.observe(record)
                }
            }
            print(suggester.yaml(source: fromLog), terminator: "")
        }
    }
}

/// Reads whole lines from a file as it grows, reopening it when it is rotated (new inode or
/// truncated), as `tail -F` does.
final class LogTail {
    let path: String
    private var handle: FileHandle?
    private var inode: UInt64 = 0
    private var offset: UInt64 = 0
    private var partial = Data()

    init(path: String) { self.path = path }

    /// New complete lines, or nil when the file cannot be opened.
    func readAvailable() -> [Data]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return handle == nil ? nil : [] }
        if handle == nil || UInt64(info.st_ino) != inode || UInt64(info.st_size) < offset {
            // Rotated: finish the old file first, then start the new one from its beginning.
            var lines = handle.map { drain($0) } ?? []
            try? handle?.close()
            guard let fresh = FileHandle(forReadingAtPath: path) else { return nil }
            handle = fresh
            inode = UInt64(info.st_ino)
            offset = 0
            partial = Data()
            lines += drain(fresh)
            return lines
        }
        return handle.map { drain($0) } ?? []
    }

    /// Whether the last read stopped at its size limit rather than at the end of the file.
    private(set) var hasMore = false

    /// At most 4 MiB a call, so a huge log is shown in pieces rather than loaded whole.
    private func drain(_ handle: FileHandle) -> [Data] {
        let chunk = 4 << 20
        guard let data = try? handle.read(upToCount: chunk), !data.isEmpty else {
            hasMore = false
            return []
        }
        hasMore = data.count == chunk
        offset += UInt64(data.count)
        partial += data
        guard let last = partial.lastIndex(of: UInt8(ascii: "\n")) else { return [] }
        let complete = partial[partial.startIndex...last]
        partial = Data(partial[(last + 1)...])
        return complete.split(separator: UInt8(ascii: "\n")).map { Data($0) }
    }
}
