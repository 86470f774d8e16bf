#if canImport(Glibc)
import Glibc
#endif

/// Who may connect to a job socket (CRIU's `lazy-pages.socket`, a Firecracker `socketPath`), and the mode it is
/// created with. The file system mode is the first gate (the kernel refuses a connect without write permission);
/// the peer's credentials (`SO_PEERCRED`, `SO_PEERGROUPS`) are the second, checked on every accepted connection
/// before anything is read from it, so that a socket made reachable by mistake (a `chmod`, a bind mount) still
/// hands a job's pages only to its owner.
public struct SocketAccess: Sendable, Equatable, CustomStringConvertible {
    /// Members of the owner's group may connect too (mode 0660, the owner's primary group); else 0600.
    public var groupAccess: Bool
    /// Root may connect besides the owner (`criu restore` usually runs as root). On by default.
    public var allowRoot: Bool

    public init(groupAccess: Bool = false, allowRoot: Bool = true) {
        self.groupAccess = groupAccess
        self.allowRoot = allowRoot
    }

    /// The socket file's mode.
    public var mode: mode_t { groupAccess ? 0o660 : 0o600 }

    /// Whether `peer` (with supplementary `groups`) may use a socket owned by `owner`; nil if so, else why not.
    public func refusal(of peer: PeerCredentials, groups: [gid_t], owner: FilesystemIdentity) -> String? {
        if peer.uid == owner.uid { return nil }
        if allowRoot && peer.uid == 0 { return nil }
        if groupAccess && (peer.gid == owner.gid || groups.contains(owner.gid)) { return nil }
        var allowed = "uid \(owner.uid)"
        if allowRoot { allowed += " or root" }
        if groupAccess { allowed += " or a member of gid \(owner.gid)" }
        return "peer uid \(peer.uid) (pid \(peer.pid)) is not the job's owner (\(allowed) may connect)"
    }

    public var description: String {
        "mode \(String(mode, radix: 8)), peers: owner\(allowRoot ? ", root" : "")\(groupAccess ? ", group" : "")"
    }
}
