import Foundation
import LinuxSupport

/// The log and pid files the daemon writes (`-o`, `--pidfile`). They often sit in a work directory other users can
/// write to, while the daemon runs as root: a file there is opened with `O_NOFOLLOW` (a symlink planted at the name
/// is refused, never followed) and must be a regular file with no other hard links, so the daemon never appends to
/// or truncates a file it was pointed at by someone else.
public enum OutputFile {
    public struct Refusal: Error, CustomStringConvertible {
        public var description: String
    }

    /// Opens `path` for appending (created 0640 if missing).
    public static func openForAppending(_ path: String) throws -> FileHandle {
        try FileHandle(fileDescriptor: open(path, O_WRONLY | O_APPEND | O_CREAT, mode: 0o640), closeOnDealloc: true)
    }

    /// Replaces the contents of `path` with `text` (created 0644 if missing).
    public static func write(_ text: String, to path: String) throws {
        let handle = try FileHandle(fileDescriptor: open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644),
                                    closeOnDealloc: true)
        try handle.write(contentsOf: Data(text.utf8))
    }

    private static func open(_ path: String, _ flags: Int32, mode: mode_t) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode)
        guard fd >= 0 else {
            if errno == ELOOP {
                throw Refusal(description: "\(path) is a symbolic link; refusing to follow it (give the real path)")
            }
            throw Refusal(description: "cannot open \(path): \(SystemCallError.reason(errno))")
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_nlink <= 1 else {
            close(fd)
            throw Refusal(description: "\(path) is not a regular file of its own (a device, a fifo, or a file with "
                + "other hard links); refusing to write to it")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }
}
