import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` with the calling thread's filesystem identity (`setfsuid`/`setfsgid`, per thread on Linux) switched
/// to a client's uid and gid, so every file the daemon opens, maps or creates on that client's behalf is checked
/// against what the client itself may do: a job never reads an image directory or memory file its creator could
/// not read, and its sockets belong to its creator. While the identity is not root, the filesystem capabilities
/// (`CAP_DAC_OVERRIDE`, ...) are off for this thread; switching back restores them.
///
/// Supplementary groups are not carried over (`SO_PEERCRED` does not tell them): access through one of them only
/// is refused, which errs on the safe side. Root clients run as themselves.
///
/// Without `CAP_SETUID`/`CAP_SETGID` the kernel silently keeps the old identity; that is detected (reading the
/// identity back with an invalid id) and the job refused, never run with the daemon's own rights.
func withFilesystemIdentity<R>(of peer: PeerCredentials, _ body: () throws -> R) throws -> R {
    guard peer.uid != 0 else { return try body() }
    let previousGID = FilesystemIdentity.setGroup(peer.gid)
    let previousUID = FilesystemIdentity.setUser(peer.uid)
    defer {
        FilesystemIdentity.setUser(previousUID)
        FilesystemIdentity.setGroup(previousGID)
    }
    guard FilesystemIdentity.setUser(uid_t.max) == peer.uid, FilesystemIdentity.setGroup(gid_t.max) == peer.gid else {
        throw ServiceError("cannot take uid \(peer.uid)'s filesystem identity to open its files "
            + "(the daemon needs CAP_SETUID and CAP_SETGID); refusing to open them with the daemon's rights")
    }
    return try body()
}
