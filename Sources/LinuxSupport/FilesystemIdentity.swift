import CLinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The calling thread's filesystem identity (`setfsuid`/`setfsgid`: per thread on Linux, what file access is
/// checked against).
public enum FilesystemIdentity {
    /// Sets the thread's filesystem uid; returns the previous one. The kernel ignores an id it does not allow
    /// (without `CAP_SETUID`) and reports no error: read it back with an invalid id (`uid_t.max`) to check.
    @discardableResult
    public static func setUser(_ uid: uid_t) -> uid_t { uid_t(truncatingIfNeeded: CLinuxSupport_setfsuid(uid)) }

    /// Sets the thread's filesystem gid; returns the previous one (see `setUser`).
    @discardableResult
    public static func setGroup(_ gid: gid_t) -> gid_t { gid_t(truncatingIfNeeded: CLinuxSupport_setfsgid(gid)) }
}
