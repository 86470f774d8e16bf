import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A listening unix stream socket bound to a path (a stale file there is replaced). Closing it unlinks the
/// path again.
public final class UnixListener: @unchecked Sendable {
    /// Numbers the short temporary names of long socket paths (several jobs may bind in one directory at once).
    private static let nextTemporary = Atomic<Int>(0)
    public let path: String
    public private(set) var descriptor: Int32

    /// Binds `directory/name` and listens. The socket is bound under a temporary name and renamed into place once
    /// it listens, so a client never finds the path while connecting to it would be refused. Paths longer than
    /// `sun_path` are reached through `/proc/self/fd` (and a short temporary name). With `replacingOnlySockets`, only
    /// a stale *socket* at the path is replaced: anything else there (a memory file given as the socket path by
    /// mistake) is an error; without it (a fixed name like CRIU's `lazy-pages.socket`), any stale file is replaced.
    public init(directory: String, name: String, backlog: Int32 = 16, replacingOnlySockets: Bool = false)
        throws(SocketError)
    {
        path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket(AF_UNIX)", errno: errno) }
        descriptor = fd
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw closing(SocketError("open \(directory)", errno: errno)) }
        defer { Glibc.close(directoryFD) }
        var existing = stat()
        if replacingOnlySockets, fstatat(directoryFD, name, &existing, AT_SYMLINK_NOFOLLOW) == 0,
           existing.st_mode & S_IFMT != S_IFSOCK
        {
            throw closing(SocketError("\(path) exists and is not a socket; refusing to replace it", errno: EEXIST))
        }
        var temporary = ".\(name).\(getpid()).tmp"
        var prefix = directory + "/"
        if path.utf8.count + temporary.utf8.count >= 100 {
            // A long name: bind a short temporary name through the directory descriptor.
            temporary = ".lp-\(getpid())-\(UnixListener.nextTemporary.add(1, ordering: .relaxed).newValue).tmp"
            prefix = "/proc/self/fd/\(directoryFD)/"
        }
        unlinkat(directoryFD, temporary, 0)
        let bound = withSocketAddress(prefix + temporary) { bind(fd, $0, $1) }
        guard let bound else { throw closing(SocketError("bind \(path) (path too long)", errno: ENAMETOOLONG)) }
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

/// Calls `body` with a `sockaddr_un` for `path`; nil (without calling it) when `path` does not fit `sun_path`.
public func withSocketAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
