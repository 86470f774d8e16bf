import Foundation
import PageServer
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whole restores over TLS with the real CRIU on every other seat: `criu dump` of a real process
/// (`lp-criu-workload`), then `criu restore --lazy-pages` with its lazy pages fetched over TLS, in both directions
/// of interop: `criu page-server --lazy-pages --tls` → `lazy-pagesd --page-server --tls`, and
/// `lazy-pages page-server --tls` → `criu lazy-pages --page-server --tls`. The restored process checks every byte of
/// its memory and reports through a fifo.
@Suite("Restores over TLS with the real CRIU", .serialized, .timeLimit(.minutes(4)),
       .enabled(if: criuAvailable, "needs the reference CRIU at \(criuBinary)"),
       .enabled(if: TestCertificates.openssl != nil, "needs openssl to make the test certificates"),
       .enabled(if: access("/usr/bin/setsid", X_OK) == 0 && access("/bin/bash", X_OK) == 0, "needs setsid (util-linux) and bash"))
struct CRIUTLSRestoreTests {
    enum Direction: String, CaseIterable, CustomTestStringConvertible {
        case criuServerToOurDaemon, ourServerToCRIUDaemon
        var testDescription: String {
            self == .criuServerToOurDaemon ? "criu page-server → lazy-pagesd" : "lazy-pages page-server → criu lazy-pages"
        }
    }

    /// Reads one line from the fifo at `path` (opened without blocking, then polled: at most `timeout` seconds).
    static func readLine(fifo path: String, timeout: Int32 = 60_000, before: () -> Void = {}) -> String? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        before()
        var line: [UInt8] = []
        var byte: UInt8 = 0
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout))
        while line.last != UInt8(ascii: "\n") && ContinuousClock.now < deadline {
            let n = read(fd, &byte, 1)
            if n == 1 { line.append(byte); continue }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, 200)
        }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }

    static func run(_ argv: [String]) throws -> Spawn.Output {
        try Spawn.run(argv, timeoutMilliseconds: 120_000)
    }

    @Test("criu restore --lazy-pages over TLS restores every byte", arguments: Direction.allCases)
    func restoreOverTLS(_ direction: Direction) throws {
        ensurePipeMaxSize()
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let images = root + "/images", work = root + "/work"
        mkdir(images, 0o755)
        mkdir(work, 0o755)
        let ready = root + "/ready", result = root + "/result"
        mkfifo(ready, 0o600)
        mkfifo(result, 0o600)

        // A real process with 16 MiB of patterned memory, in a session of its own, holding no descriptor but its
        // stdio (the test process's other descriptors, such as other suites' TCP sockets, would be dumped with it
        // and could not be restored).
        let closeInherited = #"for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-" 2>/dev/null; done; exec /usr/bin/setsid "$@""#
        let workload = try spawnChild(
            "/bin/bash",
            ["-c", closeInherited, "bash", try BuiltProducts.path(of: "lp-criu-workload"), "--mode", "idle", "--mib", "16",
             "--seed", "11", "--ready", ready, "--result", result],
            descriptors: [(0, .null), (1, .file(root + "/workload.out")), (2, .file(root + "/workload.err"))])
        let readyLine = try #require(Self.readLine(fifo: ready), "the workload never got ready")
        let pid = try #require(readyLine.split(separator: " ").first { $0.hasPrefix("pid=") }.flatMap { pid_t($0.dropFirst(4)) })
        defer { kill(-pid, SIGKILL) }
        let dump = try Self.run([criuBinary, "dump", "-t", "\(pid)", "-D", images, "-o", "dump.log", "-v4"])
        _ = waitpidRetrying(workload)
        try #require(dump.exitCode == 0, "criu dump: \((try? String(contentsOfFile: images + "/dump.log", encoding: .utf8))?.suffix(2000) ?? "")")

        let ca = certificates.caCertificate
        func tls(_ identity: TestCertificates.Identity) -> [String] {
            ["--tls", "--tls-cacert", ca, "--tls-cert", identity.certificate, "--tls-key", identity.key]
        }
        var criuServer: CRIUPageServer?
        var ourServer: PageServerProcess?
        let port: UInt16
        switch direction {
        case .criuServerToOurDaemon:
            criuServer = try CRIUPageServer(images: images, arguments: tls(certificates.server))
            port = criuServer!.port
        case .ourServerToCRIUDaemon:
            ourServer = try PageServerProcess(["-D", images, "--address", "127.0.0.1", "--port", "0", "-v3"] + tls(certificates.server))
            port = ourServer!.port
        }
        defer { ourServer?.stop() }
        let remote = ["-D", images, "-W", work, "--page-server", "--address", "127.0.0.1", "--port", "\(port)"]
            + tls(certificates.client)
        let daemon = direction == .criuServerToOurDaemon
            ? try DaemonProcess(try BuiltProducts.path(of: "lazy-pagesd"), remote, environment: [], directory: root)
            : try DaemonProcess(criuBinary, ["lazy-pages"] + remote + ["-o", "lazy-pages.log", "-v4"], environment: [], directory: root)
        // Waiting for the daemon's socket to appear: a safety-bounded poll (30 s), not synchronisation of the test.
        for _ in 0..<1500 where access(work + "/lazy-pages.socket", F_OK) != 0 { usleep(20_000) }
        let restore = try Self.run([criuBinary, "restore", "-D", images, "-W", work, "--lazy-pages", "--restore-detached",
                                    "-o", "restore.log", "-v4"])
        try #require(restore.exitCode == 0, "criu restore: \((try? String(contentsOfFile: work + "/restore.log", encoding: .utf8))?.suffix(2000) ?? "") daemon: \(daemon.stderr.suffix(1500))")
        // Every byte checked by the restored process itself.
        let verdict = Self.readLine(fifo: result) { kill(-pid, SIGUSR1) }
        #expect(verdict?.hasPrefix("OK ") == true, "\(verdict ?? "no result") \(daemon.stderr.suffix(1500))")
        let status = daemon.wait()
        #expect(status == 0, "daemon exit \(status): \(daemon.stderr.suffix(1500)) \((try? String(contentsOfFile: work + "/lazy-pages.log", encoding: .utf8))?.suffix(1500) ?? "")")
        switch direction {
        case .criuServerToOurDaemon:
            #expect(criuServer!.waitForExit())
            #expect(criuServer!.log.contains("TLS handshake completed"))
            #expect(daemon.stdout.contains("pages copied"), "\(daemon.stdout)")
        case .ourServerToCRIUDaemon:
            let log = (try? String(contentsOfFile: work + "/lazy-pages.log", encoding: .utf8)) ?? ""
            #expect(log.contains("TLS handshake completed"), "\(log.suffix(1500))")
            #expect(ourServer!.waitForLog("client certificate verified"), "\(ourServer!.stderr)")
        }
    }
}
