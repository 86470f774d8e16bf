import CLinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The process at the other end of a unix socket, learned with `SO_PEERCRED` and held by a pidfd, so that it can be
/// watched for exit and killed without ever hitting a reused pid. The pidfd comes from `SO_PEERPIDFD` where the
/// kernel has it (6.5+): taken at connect time, it names the process that connected even if it exited since and its
/// pid was reused; older kernels fall back to `pidfd_open` on the pid, which leaves that window open.
public final class PeerProcess: @unchecked Sendable {
    public let pid: pid_t
    public let uid: uid_t
    public let gid: gid_t
    /// The pidfd (readable once the process exits), or -1 once closed.
    public private(set) var descriptor: Int32

    /// The credentials of `socket`'s peer at `connect` time, and a pidfd for it.
    public init(socket: Int32) throws(SystemCallError) {
        guard let credentials = PeerCredentials(socket: socket) else {
            throw SystemCallError("getsockopt(SO_PEERCRED)", errno: errno)
        }
        pid = credentials.pid
        uid = credentials.uid
        gid = credentials.gid
        if let fd = PeerCredentials.pidfd(of: socket) {
            descriptor = fd
            return
        }
        let fd = CLinuxSupport_pidfd_open(pid, 0)
        guard fd >= 0 else { throw SystemCallError("pidfd_open(\(pid))", errno: errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        descriptor = fd
    }

    deinit { close() }

    public func close() {
        if descriptor >= 0 {
            _ = Glibc.close(descriptor)
            descriptor = -1
        }
    }

    /// True while the process has not exited (its pidfd is not readable yet).
    public var isAlive: Bool {
        guard descriptor >= 0 else { return false }
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&poller, 1, 0) == 0
    }

    /// Sends `signal` to exactly this process. Returns false when it is already gone.
    @discardableResult
    public func send(_ signal: Int32) -> Bool {
        descriptor >= 0 && CLinuxSupport_pidfd_send_signal(descriptor, signal, 0) == 0
    }
}
