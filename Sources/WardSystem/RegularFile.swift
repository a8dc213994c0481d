import Foundation
import Glibc

/// Reads the files Ward is pointed at (config, rules, bundles, its own SVID) safely: only
/// regular files, never blocking, never past a size cap. A FIFO would block the reading thread
/// forever and `/dev/zero` would grow memory without bound.
public enum RegularFile {
    /// The default `max_file_size`: far above a 1M-rule file, far below memory trouble.
    public static let defaultSizeLimit = 64 * 1024 * 1024

    /// The whole file, or why it cannot be read. Opens with O_NONBLOCK so that even a FIFO
    /// swapped in between the check and the open cannot block.
    public static func read(_ path: String, limit: Int = defaultSizeLimit) throws(FileReadError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw FileReadError(reason: CText.lastError) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw FileReadError(reason: CText.lastError) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw FileReadError(reason: "not a regular file (\(kind(status.st_mode)))")
        }
        guard status.st_size <= limit else { throw tooLarge(limit) }
        var data = Data(capacity: Int(status.st_size))
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = Glibc.read(fd, &chunk, chunk.count)
            if count < 0 {
                if Glibc.errno == EINTR { continue }
                throw FileReadError(reason: CText.lastError)
            }
            if count == 0 { return data }
            // The file may grow while it is read.
            guard data.count + count <= limit else { throw tooLarge(limit) }
            data.append(contentsOf: chunk[0..<count])
        }
    }

    private static func tooLarge(_ limit: Int) -> FileReadError {
        FileReadError(reason: "larger than max_file_size (\(limit) bytes)")
    }

    private static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFDIR: return "a directory"
        case S_IFSOCK: return "a socket"
        default: return "not a plain file"
        }
    }
}

/// Why a file could not be read, as an operator should read it after `FILE: `.
public struct FileReadError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { reason }
}
