import SystemPackage

/// Errors of the typed userfaultfd API. Each names the operation and what was wrong.
public enum UserfaultfdError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Neither `/dev/userfaultfd` nor the `userfaultfd(2)` system call gave a descriptor.
    case unavailable(device: Errno, syscall: Errno)
    /// `UFFDIO_API` failed (e.g. `EINVAL`: it already ran on this descriptor, or a feature was refused).
    case apiFailed(Errno)
    /// The kernel does not offer features the caller requires.
    case missingFeatures(Features)
    /// The kernel does not offer ioctls the caller requires.
    case missingIoctls(Ioctls)
    /// A system call failed.
    case systemCall(String, Errno)

    public var description: String {
        switch self {
        case .unavailable(let device, let syscall):
            var text = "userfaultfd is unavailable: /dev/userfaultfd: \(device); userfaultfd(2): \(syscall)"
            if syscall == .permissionDenied || syscall == .notPermitted {
                text += " (unprivileged use needs vm.unprivileged_userfaultfd=1, CAP_SYS_PTRACE,"
                    + " or read-write access to /dev/userfaultfd)"
            }
            return text
        case .apiFailed(let errno):
            return "UFFDIO_API failed: \(errno)"
        case .missingFeatures(let missing):
            return "the kernel lacks userfaultfd features: \(missing.names.joined(separator: ", "))"
        case .missingIoctls(let missing):
            return "the kernel lacks userfaultfd ioctls: \(missing.names.joined(separator: ", "))"
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno)"
        }
    }
}
