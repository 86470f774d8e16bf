import CLinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Process descriptors and the process's place in the tree, for modules above the platform layer.
public enum ProcessDescriptor {
    /// `pidfd_open(2)`: a close-on-exec descriptor for process `pid` (readable once it exits), or -1 with `errno`.
    public static func open(_ pid: pid_t) -> Int32 { CLinuxSupport_pidfd_open(pid, 0) }

    /// `pidfd_send_signal(2)`: signals exactly the process the descriptor refers to, never a reused pid.
    public static func signal(_ pidfd: Int32, _ signal: Int32) -> Int32 { CLinuxSupport_pidfd_send_signal(pidfd, signal, 0) }

    /// `PR_SET_CHILD_SUBREAPER`: orphaned descendants become the caller's children. False (with `errno`) on failure.
    public static func becomeSubreaper() -> Bool { CLinuxSupport_become_subreaper() == 0 }
}
