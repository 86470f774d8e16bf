import TestSupport
import Foundation
import Glibc
import Testing

/// `lazy-pages probe`, run as the built executable.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ProbeCommandTests {
    /// How to run a command as `nobody` (uid/gid 65534, no supplementary groups), if this box can.
    static let asNobody: [String]? = {
        if let setpriv = Spawn.tool("/usr/bin/setpriv", "/bin/setpriv") {
            return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        }
        if let runuser = Spawn.tool("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser") {
            return [runuser, "-u", "nobody", "--"]
        }
        return nil
    }()

    /// `vm.unprivileged_userfaultfd` (nil when unreadable).
    static let unprivilegedSysctl: Int? = (try? String(contentsOfFile: "/proc/sys/vm/unprivileged_userfaultfd",
        encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }

    /// True when `nobody` cannot open `/dev/userfaultfd` (absent, or not world read-write).
    static var deviceClosedToNobody: Bool {
        var info = stat()
        return stat("/dev/userfaultfd", &info) != 0 || info.st_mode & 0o006 != 0o006
    }

    /// True when `nobody` can neither open `/dev/userfaultfd` nor use the full system call, so the probe must fail.
    static var unprivilegedIsLockedOut: Bool {
        geteuid() == 0 && deviceClosedToNobody && unprivilegedSysctl == 0
    }

    /// True when `nobody` cannot open the device but `vm.unprivileged_userfaultfd=1` lets it use the full system
    /// call (as CI sets it for CRIU's zdtm), so the probe must succeed through userfaultfd(2).
    static var unprivilegedUsesTheSysctl: Bool {
        geteuid() == 0 && deviceClosedToNobody && unprivilegedSysctl == 1
    }

    @Test func jsonReportsTheFeaturesAMonitorNeeds() throws {
        let probe = try BuiltProducts.path(of: "lazy-pages")
        let output = try Spawn.run([probe, "probe", "--json"])
        #expect(output.exitCode == 0, "stderr: \(output.stderr)")
        #expect(output.stderr.isEmpty)
        let object = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8))
        let report = try #require(object as? [String: Any])

        let names = try #require(report["featureNames"] as? [String])
        for needed in ["event_fork", "event_remap", "event_remove", "event_unmap", "move"] {
            #expect(names.contains(needed), "\(needed) missing from \(names)")
        }
        let hex = try #require(report["features"] as? String)
        #expect(hex.hasPrefix("0x"))
        let mask = try #require(UInt64(hex.dropFirst(2), radix: 16))
        #expect(mask & 0x1_0056 == 0x1_0056, "fork|remap|remove|unmap|move bits in \(hex)")
        #expect(report["kernelFaults"] as? Bool == true)
        #expect(report["openPath"] as? String == "/dev/userfaultfd")
        #expect((report["anonymousRangeIoctlNames"] as? [String])?.contains("copy") == true)
        let release = try String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)
        #expect(report["kernelRelease"] as? String == release.trimmingCharacters(in: .whitespacesAndNewlines))
        // Sorted keys: the encoder's output lists top-level keys alphabetically.
        let keys = output.stdout.split(separator: "\n").filter { $0.hasPrefix("  \"") }.map { String($0) }
        #expect(keys == keys.sorted())
    }

    @Test func textReportNamesTheOpenPath() throws {
        let output = try Spawn.run([try BuiltProducts.path(of: "lazy-pages"), "probe"])
        #expect(output.exitCode == 0)
        #expect(output.stdout.contains("open path:         /dev/userfaultfd"))
        #expect(output.stdout.contains("0x1ffff"))
    }

    @Test(.enabled(if: asNobody != nil, "needs setpriv or runuser to drop to nobody"),
          .enabled(if: unprivilegedIsLockedOut,
                   "needs root, /dev/userfaultfd closed to others and vm.unprivileged_userfaultfd=0 (it is \(unprivilegedSysctl.map(String.init) ?? "unreadable"); unprivilegedProbeUsesTheSysctl covers 1)"))
    func unprivilegedProbeFailsWithOneLine() throws {
        let probe = try BuiltProducts.path(of: "lazy-pages")
        let output = try Spawn.run(try #require(Self.asNobody) + [probe, "probe", "--json"])
        #expect(output.exitCode == 1, "status \(output.status)")
        let lines = output.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "stderr: \(output.stderr)")
        let line = String(lines.first ?? "")
        #expect(line.contains("EPERM"))
        #expect(line.contains("EACCES"))
        #expect(line.contains("only UFFD_USER_MODE_ONLY works"))

        let report = try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any])
        #expect(report["kernelFaults"] as? Bool == false)
        #expect(report["syscall"] as? String == "EPERM")
        #expect(report["userModeOnly"] as? String == "ok")
        #expect(report["openPath"] == nil)
    }

    @Test(.enabled(if: asNobody != nil, "needs setpriv or runuser to drop to nobody"),
          .enabled(if: unprivilegedUsesTheSysctl,
                   "needs root, /dev/userfaultfd closed to others and vm.unprivileged_userfaultfd=1 (it is \(unprivilegedSysctl.map(String.init) ?? "unreadable"); unprivilegedProbeFailsWithOneLine covers 0)"))
    func unprivilegedProbeUsesTheSysctl() throws {
        let probe = try BuiltProducts.path(of: "lazy-pages")
        let output = try Spawn.run(try #require(Self.asNobody) + [probe, "probe", "--json"])
        #expect(output.exitCode == 0, "status \(output.status), stderr: \(output.stderr)")
        #expect(output.stderr.isEmpty, "stderr: \(output.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any])
        #expect(report["device"] as? String == "EACCES")
        #expect(report["syscall"] as? String == "ok")
        #expect(report["openPath"] as? String == "userfaultfd(2)")
        #expect(report["kernelFaults"] as? Bool == true)
        #expect(report["problem"] == nil)
        let privileges = try #require(report["privileges"] as? [String: Any])
        #expect(privileges["euid"] as? Int == 65534)
        #expect(privileges["capSysPtrace"] as? Bool == false)
        #expect(privileges["unprivilegedUserfaultfd"] as? Int == 1)
        #expect(privileges["deviceAccess"] as? Bool == false)
    }
}
