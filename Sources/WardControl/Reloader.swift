import Foundation
import Glibc
import WardConfig
import WardCore
import WardObservability
import WardSystem
import WardTLS

/// The result of one reload, as logged and as `POST /reload` and `ward reload` report it.
struct ReloadOutcome {
    var ok: Bool
    var generation: UInt64
    var rules: Int
    var sha256: String
    var error: String?
    /// A failure that a moment may fix (a cert and key caught mid-rotation).
    var retryable = false
    /// False when every file was byte-identical to the running generation.
    var changed = true
    var durationMilliseconds: Double = 0

    var json: String {
        var object: [String: Any] = ["ok": ok, "generation": generation]
        if ok {
            object["rules"] = rules
            object["sha256"] = sha256
            object["changed"] = changed
            object["duration_ms"] = (durationMilliseconds * 10).rounded() / 10
        } else {
            object["error"] = error ?? "unknown error"
        }
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }
}

/// Builds, validates and publishes a new generation, or keeps the old one. Runs on the control
/// thread (never an event loop of the data plane); one reload at a time.
final class Reloader {
    let configPath: String
    let store: SnapshotStore
    let log: ConnectionLog
    let metrics: MetricsRegistry
    var workers: [Worker] = []
    /// Runs on the control thread after every publication, whatever triggered the reload:
    /// the one place that follows a new generation (file watches move with the config).
    var afterPublication: ((Publication) -> Void)?
    private var lastUnchangedLine: ContinuousClock.Instant?

    init(configPath: String, store: SnapshotStore, log: ConnectionLog, metrics: MetricsRegistry) {
        self.configPath = configPath
        self.store = store
        self.log = log
        self.metrics = metrics
    }

    /// The first generation, built at start-up.
    static func publication(
        for snapshot: RuntimeSnapshot, generation: UInt64, workers: Int
    ) throws -> Publication {
        let contexts = try (0..<workers).map { _ in try snapshot.makeTLSContexts() }
        let (sources, files) = digests(of: snapshot.config)
        return Publication(
            generation: generation, snapshot: snapshot, contexts: contexts, sourcesDigest: sources, filesDigest: files)
    }

    /// Reloads from disk. `logFailure: false` lets the file watcher retry a half-rotated SVID
    /// quietly. A reload whose files are all byte-identical to the running generation publishes
    /// nothing, whatever triggered it: workers have nothing to re-check.
    func reload(trigger: String, logFailure: Bool = true) -> ReloadOutcome {
        let started = DispatchTime.now().uptimeNanoseconds
        let current = store.load()
        var outcome = ReloadOutcome(
            ok: false, generation: current.generation, rules: current.snapshot.ruleSet.ruleCount,
            sha256: current.sourcesDigest)
        // Hash before parsing: a file that changes while this reload parses it then differs from
        // the recorded digest, so the watcher's next look reloads again instead of calling it
        // unchanged. Hashing is cheap next to parsing, so a no-op is settled here too.
        let before = Self.digests(of: current.snapshot.config)
        // A reload someone asked for also follows names that now resolve elsewhere (DNS).
        if before.files == current.filesDigest, trigger == "file" || !SnapshotBuilder.addressesMoved(current.snapshot) {
            outcome.ok = true
            outcome.changed = false
            // The watcher sees every write; only a reload someone asked for is worth a line, and
            // at most one a second: a loop of no-op reloads must not fill the log.
            if trigger != "file" {
                metrics.reload(ok: true)
                let now = ContinuousClock.now
                if lastUnchangedLine.map({ now - $0 >= .seconds(1) }) ?? true {
                    lastUnchangedLine = now
                    logLine(outcome, trigger: trigger)
                }
            }
            return outcome
        }
        switch SnapshotBuilder.load(configPath: configPath, previous: current.snapshot) {
        case .failure(let problems):
            outcome.error = problems.problems.map(\.description).joined(separator: "; ")
            outcome.retryable = problems.problems.contains { $0.kind == .keyDoesNotMatchCertificate }
        case .success(let snapshot):
            if let conflict = restartRequired(current.snapshot.config, snapshot.config) {
                outcome.error = "\(configPath): restart required: \(conflict); nothing was changed"
                break
            }
            let sameFiles = snapshot.config.watchedFiles == current.snapshot.config.watchedFiles
            let (sources, files) = sameFiles ? before : Self.digests(of: snapshot.config)
            do {
                let contexts = try workers.indices.map { _ in try snapshot.makeTLSContexts() }
                let publication = Publication(
                    generation: current.generation + 1, snapshot: snapshot, contexts: contexts,
                    sourcesDigest: sources, filesDigest: files)
                store.publish(publication)
                for worker in workers { worker.notifyPublished() }
                afterPublication?(publication)
                outcome = ReloadOutcome(
                    ok: true, generation: publication.generation, rules: snapshot.ruleSet.ruleCount, sha256: sources)
            } catch {
                outcome.error = "\(snapshot.config.identityCert.path): \(error)"
            }
        }
        outcome.durationMilliseconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        if outcome.ok || logFailure { logLine(outcome, trigger: trigger) }
        if outcome.ok || logFailure { metrics.reload(ok: outcome.ok) }
        return outcome
    }

    func logLine(_ outcome: ReloadOutcome, trigger: String) {
        var line = LogLine(event: "reload", connection: nil, timestamp: ConnectionLog.now())
        line.add("ok", outcome.ok)
        line.add("trigger", trigger)
        if outcome.ok {
            line.add("generation", Int64(outcome.generation))
            line.add("rules", Int64(outcome.rules))
            line.add("changed", outcome.changed)
            line.add("sha256", outcome.sha256)
            line.add("duration_ms", Int64(outcome.durationMilliseconds.rounded()))
        } else {
            line.add("error", outcome.error)
            line.add("generation", Int64(outcome.generation))
        }
        log.append(line.finish())
    }

    /// What a reload cannot change in a running process, or nil. Upstreams, rules, bundles,
    /// own SVID, timeouts and outbound targets, `server_id` and `server_name` apply live;
    /// sockets (listeners and outbound entries), threads and the log file do not.
    private func restartRequired(_ old: WardConfiguration, _ new: WardConfiguration) -> String? {
        let oldListeners = old.listeners.map { "\($0.name)@\($0.listen)" }
        let newListeners = new.listeners.map { "\($0.name)@\($0.listen)" }
        if oldListeners != newListeners {
            return
                "listeners changed (\(oldListeners.joined(separator: ", ")) -> \(newListeners.joined(separator: ", ")))"
        }
        let oldOutbound = old.outbound.map { "\($0.name)@\($0.listen)" }
        let newOutbound = new.outbound.map { "\($0.name)@\($0.listen)" }
        if oldOutbound != newOutbound {
            return
                "outbound entries changed (\(oldOutbound.joined(separator: ", ")) -> \(newOutbound.joined(separator: ", ")))"
        }
        if old.workers != new.workers { return "workers changed" }
        if old.logPath != new.logPath { return "log changed" }
        if old.admin != new.admin { return "admin changed" }
        if old.logChain != new.logChain { return "log_chain changed" }
        if old.logCheckpointLines != new.logCheckpointLines || old.logCheckpointInterval != new.logCheckpointInterval {
            return "log_checkpoint_lines/log_checkpoint_interval changed"
        }
        // Privileges were dropped at start-up; a new account cannot be taken on now.
        if old.user != new.user || old.group != new.group { return "user/group changed" }
        return nil
    }

    /// (config + rules, every file) digests; unreadable files hash as empty.
    static func digests(of config: WardConfiguration) -> (sources: String, files: String) {
        func read(_ path: String) -> Data {
            (try? RegularFile.read(path, limit: config.maxFileSize)) ?? Data()
        }
        let sources = [read(config.configPath), config.rulesFile.map { read($0.path) } ?? Data()]
        let files = sources + config.certificateFiles.map(read)
        return (Digest.sha256Hex(lengthPrefixed: sources), Digest.sha256Hex(lengthPrefixed: files))
    }
}
