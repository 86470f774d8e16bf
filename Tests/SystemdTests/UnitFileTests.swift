import Foundation
import TestSupport
import Testing

/// The unit files in `systemd/` pass `systemd-analyze verify` with no warning at all, with ExecStart pointing at the
/// built daemon (verify insists that the binary exists), and the hardening the service relies on is there.
@Suite struct UnitFileTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    @Test(.timeLimit(.minutes(1)),
          .enabled(if: analyze != nil, "systemd-analyze is missing: install Debian's systemd package"))
    func unitsVerifyCleanly() throws {
        let directory = try TemporaryDirectory()
        let daemon = try BuiltProducts.path(of: "lazy-pagesd")
        for unit in ["lazy-pagesd.service", "lazy-pagesd.socket"] {
            var text = try String(contentsOfFile: Self.repository + "/systemd/" + unit, encoding: .utf8)
            text = text.replacingOccurrences(of: "ExecStart=/usr/local/bin/lazy-pagesd", with: "ExecStart=" + daemon)
            try text.write(toFile: directory.path + "/" + unit, atomically: true, encoding: .utf8)
        }
        let result = try run(
            [Self.analyze!, "verify", "--man=no", directory.path + "/lazy-pagesd.socket",
             directory.path + "/lazy-pagesd.service"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.isEmpty, "systemd-analyze warned:\n\(result.output)")
    }

    @Test func theServiceIsNotifyAndHardenedAndTheSocketIsNotWorldWritable() throws {
        let service = try settings(of: "lazy-pagesd.service")
        #expect(service["Type"] == ["notify"])
        #expect(service["ExecStart"] == ["/usr/local/bin/lazy-pagesd serve --fd-store-max 16384"])
        // The daemon counts what it stores against --fd-store-max: it must not exceed what systemd keeps (the
        // excess would be dropped silently, and the job then not continued).
        #expect(service["FileDescriptorStoreMax"] == ["16384"])
        #expect(service["Restart"] == ["on-failure"])
        // Guardians must outlive the main process long enough to do their work (RELIABILITY.md).
        #expect(service["KillMode"] == ["control-group"])
        // Our own man page first (Scripts/install-systemd installs it; Scripts/first-contact checks it is made).
        #expect(service["Documentation"]?.first?.split(separator: " ").first == "man:lazy-pagesd(8)")
        #expect(service["NoNewPrivileges"] == ["yes"])
        #expect(service["ProtectSystem"] == ["strict"])
        #expect(service["ProtectHome"] == ["read-only"])
        #expect(service["PrivateTmp"] == ["yes"])
        #expect(service["RuntimeDirectory"] == ["lazy-pagesd"])
        let capabilities = Set((service["CapabilityBoundingSet"] ?? []).flatMap { $0.split(separator: " ").map(String.init) })
        #expect(capabilities.isSuperset(of: ["CAP_SYS_PTRACE", "CAP_KILL"]))
        #expect(!capabilities.contains("CAP_SYS_ADMIN") && !capabilities.contains("CAP_DAC_OVERRIDE"))
        let socket = try settings(of: "lazy-pagesd.socket")
        #expect(socket["ListenStream"] == ["/run/lazy-pagesd/control.sock"])
        #expect(socket["SocketMode"] == ["0660"])
        #expect(socket["FileDescriptorName"] == ["control"])
    }

    /// `Key=value` lines of a unit (comments and sections dropped), every value of a key in order.
    func settings(of unit: String) throws -> [String: [String]] {
        let text = try String(contentsOfFile: Self.repository + "/systemd/" + unit, encoding: .utf8)
        var result: [String: [String]] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.hasPrefix("[") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            result[String(line[..<equals]), default: []].append(String(line[line.index(after: equals)...]))
        }
        return result
    }

    /// Runs `argv` and returns its exit status and its stdout and stderr together.
    func run(_ argv: [String]) throws -> (status: Int32, output: String) { try Spawn.runMerged(argv) }
}
