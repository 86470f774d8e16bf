#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a unix socket, as the kernel says (`SO_PEERCRED`): taken when the peer connected,
/// so it cannot be forged by the peer.
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
        guard let credentials = try? PeerCredentials(peerOf: socket) else { return nil }
        self = credentials
    }

    /// The credentials of the peer of `socket`; throws when the kernel cannot say (not a unix socket, closed).
    public init(peerOf socket: Int32) throws(SocketError) {
        var credentials = KernelUcred()
        var length = socklen_t(MemoryLayout<KernelUcred>.size)
        guard getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else {
            throw SocketError("getsockopt(SO_PEERCRED)", errno: errno)
        }
        self.init(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid)
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// `struct ucred` (Glibc hides it behind `_GNU_SOURCE`): what `SO_PEERCRED` fills in.
private struct KernelUcred {
    var pid: pid_t = 0
    var uid: uid_t = 0
    var gid: gid_t = 0
}
