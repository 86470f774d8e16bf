import CLinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A filesystem identity (`setfsuid`/`setfsgid`, per thread on Linux): whose rights the daemon uses to open, create
/// and remove a file on someone's behalf.
public struct FilesystemIdentity: Sendable, Equatable, CustomStringConvertible {
    public var uid: uid_t
    public var gid: gid_t

    public init(uid: uid_t, gid: gid_t) {
        self.uid = uid
        self.gid = gid
    }

    public init(_ peer: PeerCredentials) { self.init(uid: peer.uid, gid: peer.gid) }

    /// The calling thread's current filesystem identity (an invalid id asks without changing it).
    public static var current: FilesystemIdentity {
        FilesystemIdentity(uid: uid_t(CLinuxSupport_setfsuid(uid_t.max)), gid: gid_t(CLinuxSupport_setfsgid(gid_t.max)))
    }

    public var description: String { "uid \(uid) gid \(gid)" }
}

public struct FilesystemIdentityError: Error, CustomStringConvertible {
    public let identity: FilesystemIdentity
    public var description: String {
        "cannot take \(identity)'s filesystem identity to open its files (the daemon needs CAP_SETUID and "
            + "CAP_SETGID); refusing to open them with the daemon's rights"
    }
}

/// Runs `body` with the calling thread's filesystem identity switched to `identity`, so every file the daemon
/// opens, maps, creates or removes on that user's behalf is checked against what the user itself may do: a job never
/// reads an image directory or memory file its creator could not read, its sockets belong to its creator, and
/// removing one can never reach a file its creator could not remove. While the identity is not root, the filesystem
/// capabilities (`CAP_DAC_OVERRIDE`, ...) are off for this thread; switching back restores them.
///
/// Supplementary groups are not carried over (`SO_PEERCRED` does not tell them): access through one of them only
/// is refused, which errs on the safe side. Nothing changes when the thread already has `identity` (root for root,
/// the standalone daemon for whoever runs it).
///
/// Without `CAP_SETUID`/`CAP_SETGID` the kernel silently keeps the old identity; that is detected (reading the
/// identity back with an invalid id) and refused, never run with the daemon's own rights.
public func withFilesystemIdentity<R>(_ identity: FilesystemIdentity, _ body: () throws -> R) throws -> R {
    if identity == .current { return try body() }
    let previousGID = CLinuxSupport_setfsgid(identity.gid)
    let previousUID = CLinuxSupport_setfsuid(identity.uid)
    defer {
        CLinuxSupport_setfsuid(uid_t(previousUID))
        CLinuxSupport_setfsgid(gid_t(previousGID))
    }
    guard FilesystemIdentity.current == identity else { throw FilesystemIdentityError(identity: identity) }
    return try body()
}

/// `withFilesystemIdentity` for a control client: root clients run as themselves.
public func withFilesystemIdentity<R>(of peer: PeerCredentials, _ body: () throws -> R) throws -> R {
    guard peer.uid != 0 else { return try body() }
    return try withFilesystemIdentity(FilesystemIdentity(peer), body)
}
