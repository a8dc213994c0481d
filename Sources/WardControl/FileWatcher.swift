internal import CLibevent
import Foundation
import Glibc
import WardCore

/// Reloads when the config, rules, bundles or own SVID change on disk.
///
/// Watches each file's folder, not the file, so the three ways files get replaced all show:
/// an editor's write-then-rename, a Kubernetes volume's atomic `..data` symlink swap, and
/// spiffe-helper rewriting cert, key and bundle one after another. Events are debounced
/// (200 ms); a cert and key caught mid-rotation are retried, not reported, for up to 2 s.
final class FileWatcher {
    static let debounce = timeval(tv_sec: 0, tv_usec: 200_000)
    static let mismatchRetries = 10

    private let reloader: Reloader
    private let fd: Int32
    private var readEvent: OpaquePointer?
    private var timer: OpaquePointer?
    /// Watch descriptor -> names in that folder that matter.
    private var names: [Int32: Set<String>] = [:]
    private var retries = 0

    init?(base: OpaquePointer, reloader: Reloader) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        self.reloader = reloader
        let context = Unmanaged.passUnretained(self).toOpaque()
        readEvent = event_new(base, fd, Int16(EV_READ | EV_PERSIST), inotifyCallback, context)
        timer = event_new(base, -1, 0, debounceCallback, context)
        event_add(readEvent, nil)
    }

    deinit {
        if let readEvent { event_free(readEvent) }
        if let timer { event_free(timer) }
        Glibc.close(fd)
    }

    /// (Re)places the watches for `files`: called at start and after every publication,
    /// since a new config may name other files. A folder already watched keeps its watch
    /// (inotify_add_watch returns the same descriptor), so no event falls into a gap; only
    /// folders no longer needed are dropped.
    func watch(_ files: [String]) {
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)
        var wanted: [Int32: Set<String>] = [:]
        for file in files {
            for (folder, name) in Self.watchPoints(of: file) {
                let descriptor = inotify_add_watch(fd, folder.isEmpty ? "." : folder, mask)
                guard descriptor >= 0 else { continue }
                wanted[descriptor, default: []].insert(name)
            }
        }
        for descriptor in names.keys where wanted[descriptor] == nil { inotify_rm_watch(fd, descriptor) }
        names = wanted
    }

    /// Every (folder, name) whose change can change what `path` reads: its own entry, each
    /// symlink on the way (a swapped `current -> r2` folder link, a linked file) in the folder
    /// that holds it, and the file the path finally resolves to.
    static func watchPoints(of path: String) -> [(folder: String, name: String)] {
        func split(_ path: String) -> (String, String) {
            ((path as NSString).deletingLastPathComponent, (path as NSString).lastPathComponent)
        }
        var points = [split(path)]
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var prefix = ""
        for component in absolute.split(separator: "/") {
            prefix += "/" + component
            var status = stat()
            if lstat(prefix, &status) == 0, status.st_mode & S_IFMT == S_IFLNK { points.append(split(prefix)) }
        }
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            let real = String(cString: resolved)
            if real != absolute { points.append(split(real)) }
        }
        return points
    }

    fileprivate func readEvents() {
        var buffer = [UInt8](repeating: 0, count: 8192)
        var relevant = false
        while true {
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { break }
            var offset = 0
            let header = MemoryLayout<inotify_event>.size
            buffer.withUnsafeBytes { raw in
                while offset + header <= count {
                    let descriptor = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                    let mask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                    // Events were lost, or a watched folder went away: look at everything.
                    if mask & UInt32(IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
                        relevant = true
                    }
                    let nameLength = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    let nameBytes = raw[(offset + header)..<min(count, offset + header + nameLength)]
                    let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                    // `..data` is the symlink a Kubernetes volume swaps to publish new files.
                    if name.hasPrefix("..data") || names[descriptor]?.contains(name) == true { relevant = true }
                    offset += header + nameLength
                }
            }
        }
        guard relevant else { return }
        retries = 0
        arm()
    }

    private func arm() {
        var delay = Self.debounce
        event_add(timer, &delay)
    }

    fileprivate func settle() {
        let outcome = reloader.reload(trigger: "file", logFailure: false)
        if !outcome.ok, outcome.retryable, retries < Self.mismatchRetries {
            retries += 1
            arm()
            return
        }
        retries = 0
        if !outcome.ok {
            reloader.logLine(outcome, trigger: "file")
            reloader.metrics.reload(ok: false)
        }
    }
}

private let inotifyCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = { _, _, context in
    guard let context else { return }
    Unmanaged<FileWatcher>.fromOpaque(context).takeUnretainedValue().readEvents()
}

private let debounceCallback: @convention(c) (Int32, Int16, UnsafeMutableRawPointer?) -> Void = { _, _, context in
    guard let context else { return }
    Unmanaged<FileWatcher>.fromOpaque(context).takeUnretainedValue().settle()
}
