import Foundation
import Glibc
import Logging
import WardConfig
import WardSystem

/// Start-up checks on the files Ward trusts.
enum FilePolicy {
    /// Refuses a world-writable config when running as root (anyone could then choose what root
    /// loads), and warns when the private key is readable by group or others.
    static func check(_ config: WardConfiguration, logger: Logger) throws {
        if getuid() == 0, let mode = mode(of: config.configPath), mode & 0o002 != 0 {
            throw StartupError(
                message: "\(config.configPath): refusing to run as root with a world-writable config (mode "
                    + String(mode & 0o777, radix: 8) + "); chmod o-w it")
        }
        if let mode = mode(of: config.identityKey.path), mode & 0o077 != 0 {
            logger.warning(
                "private key \(config.identityKey.path) is readable by group or others (mode \(String(mode & 0o777, radix: 8))); chmod 600 it"
            )
        }
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
