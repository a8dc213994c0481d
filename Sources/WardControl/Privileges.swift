import Foundation
import Glibc
import Logging
import WardConfig
import WardCore
import WardIdentity
import WardSystem

/// Checks on the files Ward trusts, at start-up and in `ward check`.
package enum FilePolicy {
    /// Refuses a world-writable config when running as root: anyone could then choose what
    /// root loads.
    static func check(_ config: WardConfiguration) throws {
        if getuid() == 0, let mode = mode(of: config.configPath), mode & 0o002 != 0 {
            throw StartupError(
                message: "\(config.configPath): refusing to run as root with a world-writable config (mode "
                    + String(mode & 0o777, radix: 8) + "); chmod o-w it")
        }
    }

    /// What is legal but likely a mistake, as `FILE: warning: ...` lines: files or folders
    /// anyone may write (whoever writes a bundle or the rules decides who gets in), a private
    /// key others may read, and a bundle CA that names another trust domain.
    package static func warnings(_ snapshot: RuntimeSnapshot) -> [String] {
        let config = snapshot.config
        var warnings: [String] = []
        var folders: [String] = []
        for path in config.watchedFiles {
            // The path as written and the file it resolves to: a link may lead somewhere weaker.
            var paths = [path]
            if let resolved = realpath(path, nil) {
                paths.append(CText.string(resolved, or: path))
                free(resolved)
            }
            for candidate in paths {
                for folder in ancestors(of: candidate) where !folders.contains(folder) { folders.append(folder) }
            }
            if let mode = mode(of: path), mode & 0o002 != 0 {
                warnings.append(
                    "\(path): warning: world-writable (mode \(octal(mode))): anyone on this host can change what "
                        + "Ward trusts; chmod o-w it")
            }
        }
        let parents = Set(config.watchedFiles.map { folderOf($0) })
        for folder in folders {
            guard let mode = mode(of: folder), mode & 0o002 != 0 else { continue }
            // A sticky folder (/tmp) above the files protects the entries below it from others;
            // one holding the files themselves still lets anyone add names next to them.
            if mode & S_ISVTX != 0, !parents.contains(folder) { continue }
            warnings.append(
                "\(folder): warning: world-writable folder (mode \(octal(mode))): anyone on this host can replace "
                    + "the files Ward reads below it; chmod o-w it")
        }
        if let mode = mode(of: config.identityKey.path), mode & 0o077 != 0 {
            warnings.append(
                "\(config.identityKey.path): warning: private key \(config.identityKey.path) is readable by group "
                    + "or others (mode \(octal(mode))); chmod 600 it")
        }
        var holders: [String: [String]] = [:]
        for bundle in snapshot.bundles {
            for authority in bundle.authorities {
                holders[authority.sha256Hex, default: []].append(bundle.trustDomain.name)
            }
        }
        for (fingerprint, domains) in holders.sorted(by: { $0.key < $1.key }) where Set(domains).count > 1 {
            warnings.append(
                "\(config.configPath): warning: the same CA (sha256 \(fingerprint.prefix(16))…) is in the bundles of "
                    + "\(Set(domains).sorted().joined(separator: " and ")): it can sign SVIDs for each")
        }
        for (bundle, file) in zip(snapshot.bundles, config.trustDomains.map(\.bundle)) {
            for authority in bundle.authorities {
                for uri in authority.svidLeaf.uriSANs {
                    guard let id = try? SPIFFEID(parsing: uri), id.trustDomain != bundle.trustDomain else { continue }
                    warnings.append(
                        "\(file.path): warning: a CA in the bundle of \(bundle.trustDomain) names trust domain "
                            + "\(id.trustDomain) (\(uri)); it is trusted for \(bundle.trustDomain) only: check that "
                            + "this is the right bundle")
                }
            }
        }
        return warnings
    }

    private static func octal(_ mode: mode_t) -> String { String(mode & 0o7777, radix: 8) }

    private static func folderOf(_ path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        return folder.isEmpty ? "." : folder
    }

    /// Every folder above `path`, nearest first, up to `/` (or `.` for a relative path).
    private static func ancestors(of path: String) -> [String] {
        var folders: [String] = []
        var current = folderOf(path)
        while !folders.contains(current) {
            folders.append(current)
            if current == "/" || current == "." { break }
            current = folderOf(current)
        }
        return folders
    }

    static func mode(of path: String) -> mode_t? {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode : nil
    }
}

/// `user:`/`group:`: drop root after binding, so a compromise of the data plane is not root.
enum Privileges {
    static func drop(user: String?, group: String?, admin: AdminAddress?, logger: Logger) throws {
        guard user != nil || group != nil else { return }
        guard getuid() == 0 else {
            logger.warning("user:/group: ignored: not running as root")
            return
        }
        var uid = getuid()
        var gid = getgid()
        if let user {
            guard let entry = getpwnam(user) else { throw StartupError(message: "user '\(user)' does not exist") }
            uid = entry.pointee.pw_uid
            gid = entry.pointee.pw_gid
        }
        if let group {
            guard let entry = getgrnam(group) else { throw StartupError(message: "group '\(group)' does not exist") }
            gid = entry.pointee.gr_gid
        }
        // The admin socket stays usable by the account Ward now runs as.
        if case .unix(let path) = admin { chown(path, uid, gid) }
        guard setgroups(0, nil) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
            throw StartupError(
                message: "cannot drop privileges to \(user ?? "")/\(group ?? ""): \(CText.lastError)")
        }
        // Root must not be recoverable.
        if uid != 0, setuid(0) == 0 { throw StartupError(message: "privileges could be regained after dropping them") }
        logger.info("dropped privileges to uid \(uid) gid \(gid)")
    }
}

struct StartupError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The open-file limit: every connection holds two descriptors (its peer's, and its upstream's
/// or target's), so the soft limit a shell or unit leaves (often 1,024) would end accepts long
/// before `max_connections`. Ward takes the hard limit at start, as HAProxy does.
package enum DescriptorLimit {
    /// Raises the soft limit to the hard one; returns the limit in force.
    package static func raise() -> UInt64? {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) == 0 { limit = raised }
        }
        return UInt64(limit.rlim_cur)
    }

    /// Once everything is open (listening sockets, loops, log, admin): a warning when
    /// `max_connections` on every listener and outbound entry, two descriptors each, would not
    /// fit in what `limit` (from `raise`) leaves.
    package static func warning(for config: WardConfiguration, limit: UInt64?) -> String? {
        guard let limit else { return nil }
        let held = UInt64((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0)
        let endpoints = config.listeners.count + config.outbound.count
        let needed = UInt64(config.maxConnections) * UInt64(endpoints) * 2
        guard needed + held > limit else { return nil }
        return "warning: max_connections (\(config.maxConnections)) on \(endpoints) listener(s) and outbound "
            + "entries may need \(needed) descriptors (two per connection) beside the \(held) open now, over the "
            + "open-file limit (\(limit)): past it, accepts pause until descriptors free up. Raise LimitNOFILE= "
            + "(systemd) or ulimit -n, or lower max_connections"
    }
}
