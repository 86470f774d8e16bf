#if canImport(Glibc)
import Glibc
#endif

/// A listening unix stream socket bound to a path (a stale file there is unlinked first). Closing it unlinks the
/// path again.
public final class UnixListener: @unchecked Sendable {
    public let path: String
    public private(set) var descriptor: Int32

    /// Binds `directory/name` and listens. The socket is bound under a temporary name and renamed into place once
    /// it listens, so a client never finds the path while connecting to it would be refused. Paths longer than
    /// `sun_path` are reached through `/proc/self/fd`.
    public init(directory: String, name: String, backlog: Int32 = 16) throws(SocketError) {
        path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket(AF_UNIX)", errno: errno) }
        descriptor = fd
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw closing(SocketError("open \(directory)", errno: errno)) }
        defer { Glibc.close(directoryFD) }
        let temporary = ".\(name).\(getpid()).tmp"
        unlinkat(directoryFD, temporary, 0)
        let prefix = path.utf8.count + temporary.utf8.count < 100 ? directory + "/" : "/proc/self/fd/\(directoryFD)/"
        let bound = withSocketAddress(prefix + temporary) { bind(fd, $0, $1) }
        guard bound == 0 else { throw closing(SocketError("bind \(directory)/\(temporary)", errno: errno)) }
        guard listen(fd, backlog) == 0 else {
            unlinkat(directoryFD, temporary, 0)
            throw closing(SocketError("listen \(path)", errno: errno))
        }
        // rename(2) replaces a stale socket file atomically.
        guard renameat(directoryFD, temporary, directoryFD, name) == 0 else {
            unlinkat(directoryFD, temporary, 0)
            throw closing(SocketError("rename to \(path)", errno: errno))
        }
    }

    private func closing(_ error: SocketError) -> SocketError {
        Glibc.close(descriptor)
        descriptor = -1
        return error
    }

    deinit { close() }

    /// Stops listening and removes the socket file.
    public func close() {
        if descriptor >= 0 {
            Glibc.close(descriptor)
            descriptor = -1
            unlink(path)
        }
    }

    /// Accepts one connection (close-on-exec, non-blocking).
    public func accept() throws(SocketError) -> Int32 {
        while true {
            let fd = Glibc.accept(descriptor, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                return fd
            }
            if errno != EINTR { throw SocketError("accept", errno: errno) }
        }
    }
}

/// Calls `body` with a `sockaddr_un` for `path`.
func withSocketAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    precondition(bytes.count < MemoryLayout.size(ofValue: address.sun_path), "socket path too long: \(path)")
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
