/// The human-readable form of a probe report.
extension ProbeReport {
    var text: String {
        var lines: [String] = []
        lines.append("kernel:            \(kernelRelease)")
        lines.append("/dev/userfaultfd:  \(device)")
        lines.append("userfaultfd(2):    \(syscall)")
        lines.append("open path:         \(openPath ?? "none")")
        lines.append("kernel faults:     \(kernelFaults ? "trapped" : "NOT trapped")")
        if let userModeOnly { lines.append("user-mode-only:    \(userModeOnly)") }
        lines.append("features:          \(features ?? "unknown") \(featureNames.joined(separator: " "))")
        lines.append("ioctls:            \(ioctls ?? "unknown") \(ioctlNames.joined(separator: " "))")
        lines.append(
            "anonymous range:   \(anonymousRangeIoctls ?? "unknown") \(anonymousRangeIoctlNames.joined(separator: " "))")
        let sysctl = privileges.unprivilegedUserfaultfd.map(String.init) ?? "unreadable"
        lines.append(
            "privileges:        euid \(privileges.euid), CAP_SYS_PTRACE \(privileges.capSysPtrace ? "yes" : "no"),"
                + " vm.unprivileged_userfaultfd=\(sysctl), /dev/userfaultfd \(privileges.deviceAccess ? "rw" : "no access")")
        return lines.joined(separator: "\n") + "\n"
    }
}
