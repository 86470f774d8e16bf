import Foundation
import Glibc
import SystemPackage
import Userfaultfd

/// What `lazy-pages probe` found. Encoded as JSON with sorted keys; masks are hex strings ("0x1ffff").
struct ProbeReport: Codable, Equatable {
    /// `uname -r`.
    var kernelRelease: String
    /// How each way of getting a uffd (able to trap kernel faults) fared: "ok" or the errno ("EPERM").
    var device: String
    var syscall: String
    /// The path a monitor would use (`/dev/userfaultfd` or `userfaultfd(2)`), nil when neither worked.
    var openPath: String?
    /// True when the uffd was made without `UFFD_USER_MODE_ONLY`: faults raised inside the kernel (a `read()`
    /// into a lazy buffer, futexes, `process_vm_*`) are trapped. Post-copy needs this.
    var kernelFaults: Bool
    /// Tried only when `kernelFaults` is false: whether a `UFFD_USER_MODE_ONLY` uffd can be made ("ok"/errno).
    var userModeOnly: String?
    /// `UFFDIO_API`'s report, from the uffd that could be made (nil when none could).
    var features: String?
    var featureNames: [String]
    var ioctls: String?
    var ioctlNames: [String]
    /// The range ioctls a private anonymous `MISSING` registration offers.
    var anonymousRangeIoctls: String?
    var anonymousRangeIoctlNames: [String]
    var privileges: Privileges
    /// Why post-copy cannot work here, nil when it can.
    var problem: String?

    struct Privileges: Codable, Equatable {
        var euid: UInt32
        /// `CAP_SYS_PTRACE` in the effective set.
        var capSysPtrace: Bool
        /// `/proc/sys/vm/unprivileged_userfaultfd`, nil when unreadable.
        var unprivilegedUserfaultfd: Int?
        /// Read-write access to `/dev/userfaultfd` (as `access(2)` sees it).
        var deviceAccess: Bool
    }
}

extension ProbeReport {
    /// Probes the running kernel.
    static func gather() -> ProbeReport {
        let flags: OpenFlags = [.closeOnExec, .nonBlocking]
        let device = Result { () throws(UserfaultfdError) in try Userfaultfd.create(via: .device, flags: flags) }
        let syscall = Result { () throws(UserfaultfdError) in try Userfaultfd.create(via: .syscall, flags: flags) }
        let full = (try? device.get()) ?? (try? syscall.get())

        var userModeOnly: Result<Userfaultfd, UserfaultfdError>?
        if full == nil {
            let restricted = flags.union(.userModeOnly)
            userModeOnly = Result { () throws(UserfaultfdError) in try Userfaultfd.create(flags: restricted) }
        }
        let probed = full ?? (try? userModeOnly?.get())

        var report = ProbeReport(
            kernelRelease: kernelRelease(), device: status(device), syscall: status(syscall),
            openPath: full?.openPath?.rawValue, kernelFaults: full != nil, userModeOnly: userModeOnly.map(status),
            features: nil, featureNames: [], ioctls: nil, ioctlNames: [], anonymousRangeIoctls: nil,
            anonymousRangeIoctlNames: [], privileges: privileges(), problem: nil)

        if let probed, let api = try? probed.negotiate(features: []) {
            report.features = hex(api.features.rawValue)
            report.featureNames = api.features.names
            report.ioctls = hex(api.ioctls.rawValue)
            report.ioctlNames = api.ioctls.names
            if let range = anonymousRangeIoctls(probed) {
                report.anonymousRangeIoctls = hex(range.rawValue)
                report.anonymousRangeIoctlNames = range.names
            }
        }
        if full == nil {
            var problem = "userfaultfd cannot trap kernel faults here: /dev/userfaultfd: \(report.device),"
                + " userfaultfd(2): \(report.syscall) (post-copy needs root or CAP_SYS_PTRACE,"
                + " vm.unprivileged_userfaultfd=1, or read-write access to /dev/userfaultfd)"
            if report.userModeOnly == "ok" {
                problem += "; only UFFD_USER_MODE_ONLY works, so faults raised inside the kernel would fail"
            } else if let restricted = report.userModeOnly {
                problem += "; UFFD_USER_MODE_ONLY fails too: \(restricted)"
            }
            report.problem = problem
        }
        return report
    }

    /// The range ioctls of a one-page private anonymous `MISSING` registration.
    private static func anonymousRangeIoctls(_ uffd: Userfaultfd) -> Ioctls? {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let page = mmap(nil, pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            page != MAP_FAILED
        else { return nil }
        defer { munmap(page, pageSize) }
        let range = AddressRange(start: UInt64(UInt(bitPattern: page)), length: UInt64(pageSize))
        guard let ioctls = try? uffd.register(range) else { return nil }
        try? uffd.unregister(range)
        return ioctls
    }

    private static func status(_ result: Result<Userfaultfd, UserfaultfdError>) -> String {
        switch result {
        case .success: return "ok"
        case .failure(.systemCall(_, let e)), .failure(.unavailable(_, let e)): return errnoName(e)
        case .failure(let other): return other.description
        }
    }

    private static func kernelRelease() -> String {
        var name = utsname()
        guard uname(&name) == 0 else { return "unknown" }
        return withUnsafeBytes(of: &name.release) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    private static func privileges() -> Privileges {
        let sysctl = (try? String(contentsOfFile: "/proc/sys/vm/unprivileged_userfaultfd", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        return Privileges(
            euid: geteuid(), capSysPtrace: effectiveCapabilities() & (1 << 19) != 0,
            unprivilegedUserfaultfd: sysctl, deviceAccess: access("/dev/userfaultfd", R_OK | W_OK) == 0)
    }

    /// `CapEff` from `/proc/self/status`.
    private static func effectiveCapabilities() -> UInt64 {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
        }
        return 0
    }

    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    /// The symbolic name of the errnos a probe meets; others as "errno N".
    static func errnoName(_ e: Errno) -> String {
        let names: [Errno: String] = [
            .notPermitted: "EPERM", .permissionDenied: "EACCES", .noSuchFileOrDirectory: "ENOENT",
            .noFunction: "ENOSYS", .invalidArgument: "EINVAL", Errno(rawValue: ENODEV): "ENODEV", .noMemory: "ENOMEM",
            .tooManyOpenFiles: "EMFILE",
        ]
        return names[e] ?? "errno \(e.rawValue)"
    }
}
