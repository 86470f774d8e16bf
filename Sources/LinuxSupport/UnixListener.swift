import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A listening unix stream socket at `directory/name` for a job (CRIU's `lazy-pages.socket`, a Firecracker
/// `socketPath`), made so that neither its creation nor its removal can be turned against the host:
///
/// - Everything happens relative to a descriptor of the directory, opened with the identity of the thread that makes
///   the listener (a service job: its owner's, through `withFilesystemIdentity`; the standalone daemon: whoever runs
///   it) — so swapping the directory for a symlink later redirects nothing. The socket is bound under a temporary
///   name through `/proc/self/fd/N/` (race-free: the magic link pins the directory's inode, and `bind` never follows a
///   symlink at the last component), given its mode, listened on, and then linked into place with `linkat`, which
///   fails rather than replace anything that appeared meanwhile.
/// - The socket file is created by and belongs to that identity, with mode 0600 (0660 with group access), whatever
///   the umask.
/// - Only a *stale* socket is ever replaced; a socket something listens on (asked of the kernel's socket table,
///   without connecting) never is, and a file that is not a socket is an error except at CRIU's fixed name (see
///   `init`). A stale one is removed with the owner's identity, so only one the owner may remove is.
/// - Closing removes the file only if the inode at the name is still the one bound, with the owner's identity.
/// - Every accepted connection is checked against `access` (`SO_PEERCRED`, `SO_PEERGROUPS`) before anything is read
///   from it; a refused peer is logged and closed, and the listener goes on waiting for the real one.
public final class UnixListener: @unchecked Sendable {
    /// Numbers the temporary names (several jobs may bind in one directory at once).
    private static let nextTemporary = Atomic<Int>(0)
    public let path: String
    public let name: String
    public private(set) var descriptor: Int32
    /// Whose socket it is: the filesystem identity it was created with.
    public let owner: FilesystemIdentity
    public let access: SocketAccess
    private let logger: Logger?
    private var directoryFD: Int32 = -1
    private var bound: (device: dev_t, inode: ino_t)?

    /// Binds `directory/name` and listens (see the type's description). With `replacingStaleFiles` (a fixed name like
    /// CRIU's `lazy-pages.socket`, as `criu lazy-pages` does), a stale file there that is not a socket is replaced
    /// too — still with the owner's identity, relative to the directory descriptor; without it (a path the caller
    /// chose, such as a Firecracker `socketPath`), anything but a stale socket is an error.
    public init(directory: String, name: String, backlog: Int32 = 16, access: SocketAccess = SocketAccess(),
                replacingStaleFiles: Bool = false, logger: Logger? = nil) throws(SystemCallError)
    {
        path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        self.name = name
        self.access = access
        self.logger = logger
        owner = FilesystemIdentity.current
        descriptor = -1
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw SystemCallError("\(path): not a usable socket name", errno: EINVAL)
        }
        directoryFD = open(directory, O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw closing(SystemCallError("open \(directory)", errno: errno)) }
        try removeStaleSocket(replacingStaleFiles: replacingStaleFiles)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw closing(SystemCallError("socket(AF_UNIX)", errno: errno)) }
        descriptor = fd
        let temporary = ".lp-\(getpid())-\(UnixListener.nextTemporary.add(1, ordering: .relaxed).newValue).tmp"
        unlinkat(directoryFD, temporary, 0)
        let result = withSocketAddress(procPath(temporary)) { bind(fd, $0, $1) }
        guard result == 0 else { throw closing(SystemCallError("bind \(directory)/\(temporary)", errno: result == nil ? ENAMETOOLONG : errno)) }
        do throws(SystemCallError) {
            try setMode(of: temporary)
            guard listen(fd, backlog) == 0 else { throw SystemCallError("listen \(path)", errno: errno) }
            // linkat never replaces: whatever took the name since the check above stays, and we refuse.
            guard linkat(directoryFD, temporary, directoryFD, name, 0) == 0 else {
                throw errno == EEXIST
                    ? SystemCallError("\(path) appeared while binding; refusing to replace it", errno: EEXIST)
                    : SystemCallError("link \(path)", errno: errno)
            }
        } catch {
            unlinkat(directoryFD, temporary, 0)
            throw closing(error)
        }
        unlinkat(directoryFD, temporary, 0)
    }

    /// Takes over a listening socket another process bound at `path` and left open (a successor daemon inherits
    /// its predecessor's listener). Closing later removes the file under the same rule as for one bound here: only
    /// if the inode at the name is still the socket found there now, with this process's identity.
    public init(adopting fd: Int32, path: String, access: SocketAccess = SocketAccess(), logger: Logger? = nil)
        throws(SystemCallError)
    {
        self.path = path
        let slash = path.lastIndex(of: "/")
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let directory = slash.map { String(path[..<$0]) } ?? "."
        self.access = access
        self.logger = logger
        owner = FilesystemIdentity.current
        descriptor = fd
        var listening: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening != 0 else {
            descriptor = -1
            throw SystemCallError("descriptor \(fd) for \(path) is not a listening socket", errno: ENOTSOCK)
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        directoryFD = open(directory.isEmpty ? "/" : directory, O_PATH | O_DIRECTORY | O_CLOEXEC)
        var status = stat()
        if directoryFD >= 0, fstatat(directoryFD, name, &status, AT_SYMLINK_NOFOLLOW) == 0,
           status.st_mode & S_IFMT == S_IFSOCK {
            bound = (status.st_dev, status.st_ino)
        }
    }

    /// A listener that was closed already (by a predecessor daemon that took its one connection): `descriptor` is
    /// -1, closing does nothing.
    public init(closedAt path: String, access: SocketAccess = SocketAccess()) {
        self.path = path
        name = path.split(separator: "/").last.map(String.init) ?? path
        self.access = access
        logger = nil
        owner = FilesystemIdentity.current
        descriptor = -1
    }

    private func procPath(_ entry: String) -> String { "/proc/self/fd/\(directoryFD)/\(entry)" }

    /// A socket file at the name that nothing listens on may go (if the owner may remove it); anything else stays.
    private func removeStaleSocket(replacingStaleFiles: Bool) throws(SystemCallError) {
        var existing = stat()
        guard fstatat(directoryFD, name, &existing, AT_SYMLINK_NOFOLLOW) == 0 else {
            guard errno == ENOENT else { throw closing(SystemCallError("stat \(path)", errno: errno)) }
            return
        }
        guard existing.st_mode & S_IFMT == S_IFSOCK || (replacingStaleFiles && existing.st_mode & S_IFMT != S_IFDIR) else {
            throw closing(SystemCallError("\(path) exists and is not a socket; refusing to replace it", errno: EEXIST))
        }
        guard existing.st_mode & S_IFMT != S_IFSOCK || !ListeningSockets.isListening(device: existing.st_dev, inode: existing.st_ino, connectPath: procPath(name))
        else {
            throw closing(SystemCallError(
                "\(path) is a live socket (a process listens on it); refusing to replace it", errno: EADDRINUSE))
        }
        guard unlinkat(directoryFD, name, 0) == 0 || errno == ENOENT else {
            let reason = errno
            throw closing(SystemCallError(
                "\(path) is a stale socket of uid \(existing.st_uid) that \(owner) may not remove; refusing to replace it",
                errno: reason))
        }
        logger?.info("replaced a stale socket", metadata: ["socket": "\(path)", "uid": "\(existing.st_uid)"])
    }

    /// Gives the freshly bound socket file its mode (whatever the umask made of it) and remembers its inode.
    private func setMode(of temporary: String) throws(SystemCallError) {
        let file = openat(directoryFD, temporary, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard file >= 0 else { throw SystemCallError("open \(temporary)", errno: errno) }
        defer { Glibc.close(file) }
        var status = stat()
        guard fstat(file, &status) == 0 else { throw SystemCallError("stat \(temporary)", errno: errno) }
        guard status.st_mode & S_IFMT == S_IFSOCK, status.st_uid == owner.uid else {
            throw SystemCallError("\(path): the bound socket was replaced before it listened", errno: EEXIST)
        }
        // An O_PATH descriptor has no fchmod; its /proc/self/fd link reaches exactly that inode.
        guard chmod("/proc/self/fd/\(file)", access.mode) == 0 else {
            throw SystemCallError("chmod \(path)", errno: errno)
        }
        bound = (status.st_dev, status.st_ino)
    }

    private func closing(_ error: SystemCallError) -> SystemCallError {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
        if directoryFD >= 0 { Glibc.close(directoryFD) }
        directoryFD = -1
        return error
    }

    deinit { close() }

    /// Stops listening and removes the socket file — if it is still the one bound, and with the owner's identity.
    public func close() {
        if descriptor >= 0 {
            Glibc.close(descriptor)
            descriptor = -1
        }
        guard directoryFD >= 0 else { return }
        defer {
            Glibc.close(directoryFD)
            directoryFD = -1
        }
        guard let bound else { return }
        do {
            try withFilesystemIdentity(owner) {
                var status = stat()
                guard fstatat(directoryFD, name, &status, AT_SYMLINK_NOFOLLOW) == 0 else { return }
                guard status.st_dev == bound.device, status.st_ino == bound.inode else {
                    logger?.warning("not removing the socket path: it is no longer the socket this restore bound", metadata: [
                        "socket": "\(path)", "uid": "\(status.st_uid)",
                    ])
                    return
                }
                unlinkat(directoryFD, name, 0)
            }
        } catch {
            logger?.error("cannot remove the socket file", metadata: ["socket": "\(path)", "error": "\(error)"])
        }
    }

    /// Accepts one connection (close-on-exec, non-blocking) from a peer `access` permits. A refused peer is logged and
    /// closed before anything is read from it, and nil returned: the listener goes on listening.
    public func accept() throws(SystemCallError) -> Int32? {
        let fd = retryingOnInterrupt { Glibc.accept(descriptor, nil, nil) }
        if fd < 0 {
            if errno == EAGAIN || errno == ECONNABORTED { return nil }
            throw SystemCallError("accept", errno: errno)
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        guard let peer = PeerCredentials(socket: fd) else {
            let reason = errno
            Glibc.close(fd)
            logger?.error("refused a connection on the job socket: no SO_PEERCRED", metadata: [
                "socket": "\(path)", "errno": "\(reason)",
            ])
            return nil
        }
        if let refusal = access.refusal(of: peer, groups: PeerCredentials.supplementaryGroups(of: fd), owner: owner) {
            Glibc.close(fd)
            logger?.warning("refused a connection on the job socket", metadata: [
                "socket": "\(path)", "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "reason": "\(refusal)",
            ])
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }
}

/// `O_PATH` (a descriptor that only names a file; Glibc's module hides it behind `_GNU_SOURCE`).
let O_PATH: Int32 = 0o10000000

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
