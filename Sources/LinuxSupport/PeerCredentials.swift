#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a unix socket, as the kernel says (`SO_PEERCRED`): taken when the peer connected,
/// so it cannot be forged by the peer. The one type for peer credentials (control connections, job sockets, the
/// guardian's restorer pid, the Firecracker VM).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t

    public init(pid: pid_t, uid: uid_t, gid: gid_t) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// The credentials of the peer of `socket`, or nil when the kernel cannot say.
    public init?(socket: Int32) {
        var credentials = KernelUcred()
        var length = socklen_t(MemoryLayout<KernelUcred>.size)
        guard getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        self.init(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid)
    }

    /// The peer's supplementary groups at connect time (`SO_PEERGROUPS`, Linux 4.13+); empty when unknown.
    public static func supplementaryGroups(of socket: Int32) -> [gid_t] {
        var groups = [gid_t](repeating: 0, count: 64)
        while true {
            var length = socklen_t(groups.count * MemoryLayout<gid_t>.size)
            if getsockopt(socket, SOL_SOCKET, soPeerGroups, &groups, &length) == 0 {
                return Array(groups.prefix(Int(length) / MemoryLayout<gid_t>.size))
            }
            guard errno == ERANGE, groups.count < 65536 else { return [] }
            groups = [gid_t](repeating: 0, count: max(groups.count * 2, Int(length) / MemoryLayout<gid_t>.size))
        }
    }

    /// A pidfd for the peer process as it was when it connected (`SO_PEERPIDFD`, Linux 6.5+): unlike a pid, it can
    /// never name a later process that reused the number. Nil where the kernel lacks it.
    public static func pidfd(of socket: Int32) -> Int32? {
        var fd: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(socket, SOL_SOCKET, soPeerPidfd, &fd, &length) == 0, fd >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Root manages every job; everyone else only their own.
    public func mayManage(jobOwnedBy owner: uid_t) -> Bool { uid == 0 || uid == owner }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// `SO_PEERGROUPS` and `SO_PEERPIDFD` (asm-generic/socket.h; newer than some installed headers).
private let soPeerGroups: Int32 = 59
private let soPeerPidfd: Int32 = 77

/// `struct ucred` (Glibc hides it behind `_GNU_SOURCE`): what `SO_PEERCRED` fills in.
private struct KernelUcred {
    var pid: pid_t = 0
    var uid: uid_t = 0
    var gid: gid_t = 0
}
