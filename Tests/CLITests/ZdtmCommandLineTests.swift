import CRIUImages
import Foundation
import LinuxSupport
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The daemon and our page server started exactly as zdtm starts `criu lazy-pages` and `criu page-server`
/// (`test/zdtm.py`, `__criu_act`: `--log-file X.log --images-dir DIR --verbosity=4 ... --status-fd N`, after
/// `--no-default-config` from its wrapper), serving dumps with a zombie, checked byte for byte by restore-sim.
@Suite(.serialized) struct ZdtmCommandLineTests {
    /// Three tasks (pids 100, 101, and 102 a zombie: dead in its core image, no memory images).
    static func images(in root: String) throws -> String {
        let images = root + "/images"
        try ImageLayout.mixed.write(to: images, tasks: 3, bytesPerTask: 1 << 20, zombies: 1)
        return images
    }

    /// A default configuration file that breaks the daemon if read: its work directory does not exist.
    static func poisonedDefaults(in root: String) throws -> String {
        let path = root + "/default.conf"
        try "# what /etc/criu/default.conf could hold\nwork-dir \(root)/no-such-directory\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        return "LP_CRIU_DEFAULT_CONFIG_FILES=\(path)"
    }

    static func zdtmArguments(_ action: String, images: String) -> [String] {
        [action, "--no-default-config", "--log-file", "\(action).log", "--images-dir", images, "--verbosity=4"]
    }

    static func restore(images: String, work: String) throws -> SimulationReport {
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, workDirectory: work, scenario: "verify"))
        try simulation.start()
        return try simulation.wait()
    }

    @Test(.timeLimit(.minutes(2))) func localCommandLineServesADumpWithAZombie() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let images = try Self.images(in: root)
        let defaults = try Self.poisonedDefaults(in: root)

        // Without --no-default-config the default file is read (and its work directory refused).
        let reading = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), Array(Self.zdtmArguments("lazy-pages", images: images).dropFirst(2)),
            directory: root, name: "reading", environment: [defaults])
        #expect(reading.wait() == 1)
        #expect(reading.stderrText.contains("no-such-directory"), "\(reading.stderrText)")

        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), Self.zdtmArguments("lazy-pages", images: images) + ["--status-fd", "3"],
            directory: root, name: "daemon", statusFD: true, environment: [defaults])
        try #require(daemon.waitUntilReady(), "no status byte: \(daemon.stderrText)")
        let report = try Self.restore(images: images, work: images)
        #expect(report.allPassed, "\(describe(report))")
        #expect(daemon.wait() == 0, "\(daemon.stderrText)")
        #expect(daemon.stdoutText.contains("lazy-pages: 3 tasks"), "\(daemon.stdoutText)")
        let log = try String(contentsOfFile: images + "/lazy-pages.log", encoding: .utf8)
        #expect(log.contains("zombie announced pid=102"))
        #expect(log.contains(" debug: "), "--verbosity=4 is debug")
    }

    /// zdtm's `--remote-lazy-pages` pair: our page server with `criu page-server`'s line, the daemon with
    /// `--page-server --port P --address 127.0.0.1`. The daemon's image directory is a copy whose pages files hold
    /// other bytes: every LAZY page must come from the page server (which serves the original), never from them.
    @Test(.timeLimit(.minutes(3))) func remoteCommandLinesServeEveryLazyPageFromThePageServer() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let original = try Self.images(in: root)
        let defaults = try Self.poisonedDefaults(in: root)
        let copy = root + "/copy"
        try FileManager.default.copyItem(atPath: original, toPath: copy)
        for name in try FileManager.default.contentsOfDirectory(atPath: copy) where name.hasPrefix("pages-") {
            let size = try #require(FileManager.default.attributesOfItem(atPath: copy + "/" + name)[.size] as? Int)
            try Data(repeating: 0x5a, count: size).write(to: URL(fileURLWithPath: copy + "/" + name))
        }
        let set = try ImageSet(directory: original)
        let lazyPages = try set.tasks.map(\.pid).filter { try set.hasMemory(pid: Int32($0)) }
            .reduce(0) { $0 + (try set.process(pid: Int32($1)).lazyPageCount) }

        let server = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            Self.zdtmArguments("page-server", images: original)
                + ["--pidfile", "ps.pid", "--port", "0", "--lazy-pages", "--address", "127.0.0.1", "--status-fd", "3"],
            directory: root, name: "server", statusFD: true, environment: [defaults])
        defer {
            if server.status == nil { kill(server.pid, SIGTERM) }
            server.wait()
        }
        try #require(server.waitUntilReady(), "no status byte: \(server.stderrText)")
        let port = try #require(server.stdoutText.split(separator: " ").last.flatMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) },
                                "no port in \(server.stdoutText)")
        let pid = try String(contentsOfFile: original + "/ps.pid", encoding: .utf8)
        #expect(pid == "\(server.pid)\n", "the pidfile goes in the work directory (the images directory)")

        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"),
            Self.zdtmArguments("lazy-pages", images: copy)
                + ["--status-fd", "3", "--page-server", "--port", "\(port)", "--address", "127.0.0.1"],
            directory: root, name: "daemon", statusFD: true, environment: [defaults])
        try #require(daemon.waitUntilReady(), "no status byte: \(daemon.stderrText)")
        // The simulator checks against the original images (and fills the eager pages from them).
        let report = try Self.restore(images: original, work: copy)
        #expect(report.allPassed, "\(describe(report))")
        #expect(daemon.wait() == 0, "\(daemon.stderrText)")
        // zdtm waits for the page server to exit by itself, as CRIU's does once its one client is done.
        #expect(server.wait() == 0, "\(server.stderrText)")
        let log = try String(contentsOfFile: copy + "/lazy-pages.log", encoding: .utf8)
        #expect(log.contains("\"remotePagesReceived\": \(lazyPages)"), "every lazy page from the server")
        #expect(log.contains("zombie announced pid=102"))
        let serverLog = try String(contentsOfFile: original + "/page-server.log", encoding: .utf8)
        #expect(serverLog.contains(" debug: "), "--verbosity=4 is debug")

        // The control: served from the copy's own pages files, the same restore reads the wrong bytes.
        let local = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", copy, "-o", "local.log", "--status-fd", "3"],
            directory: root, name: "local", statusFD: true)
        try #require(local.waitUntilReady(), "no status byte: \(local.stderrText)")
        let wrong = try Self.restore(images: original, work: copy)
        #expect(!wrong.allPassed, "the copy's pages differ, so a restore from them must fail the check")
        local.wait()
    }

    @Test(.timeLimit(.minutes(1))) func pageServerDetachesWithDashD() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let images = try Self.images(in: root)
        let launched = try Spawn.run([
            try BuiltProducts.path(of: "lazy-pages"), "page-server", "-dD", images, "--pidfile", root + "/ps.pid",
            "--port=0", "-o", "ps.log", "-v4",
        ])
        #expect(launched.exitCode == 0, "\(launched.stderr)")
        let pid = try #require(Int32(try String(contentsOfFile: root + "/ps.pid", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        // Not our child (it detached), so its end is watched through a pidfd; SIGKILL only if the test fails.
        let pidfd = ProcessDescriptor.open(pid)
        try #require(pidfd >= 0, "the detached page server is not running")
        defer { _ = ProcessDescriptor.signal(pidfd, SIGKILL); close(pidfd) }
        #expect(try String(contentsOfFile: images + "/ps.log", encoding: .utf8).contains("page server listening"))
        // "Runs until killed": SIGTERM ends it even though this test process (its ancestor) blocks most signals.
        #expect(ProcessDescriptor.signal(pidfd, SIGTERM) == 0)
        var watched = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&watched, 1, 30_000)  // a safety net; it exits at once
        #expect(ready == 1, "the detached page server did not exit on SIGTERM")
    }

    @Test func criuRefusalsAreUsageErrors() throws {
        // CRIU itself refuses `-v 4` ("excessive parameter"): so do we.
        let spaced = try Spawn.run([try BuiltProducts.path(of: "lazy-pagesd"), "-D", "/nonexistent", "-v", "4"])
        #expect(spaced.exitCode == 64, "\(spaced.stderr)")
        let ambiguous = try Spawn.run([try BuiltProducts.path(of: "lazy-pagesd"), "--log", "x"])
        #expect(ambiguous.exitCode == 64)
        #expect(ambiguous.stderr.contains("option '--log' is ambiguous"), "\(ambiguous.stderr)")
        // --ps-socket takes a descriptor this process holds, and a stream socket.
        for command in [["lazy-pages", "page-server", "-D", "/nonexistent"], ["lazy-pagesd", "-D", "/nonexistent", "--page-server"]] {
            let socket = try Spawn.run([try BuiltProducts.path(of: command[0])] + command.dropFirst() + ["--ps-socket", "99"])
            #expect(socket.exitCode == 64, "\(command): \(socket.stderr)")
            #expect(socket.stderr.contains("--ps-socket 99: not an open descriptor of this process"), "\(socket.stderr)")
        }
        // CRIU 4.2 refuses --stream for page-server and lazy-pages itself; the message says so.
        let stream = try Spawn.run([try BuiltProducts.path(of: "lazy-pages"), "page-server", "--stream"])
        #expect(stream.exitCode == 64)
        #expect(stream.stderr.contains("--stream cannot be used with the page-server command (nor with criu page-server)"),
                "\(stream.stderr)")
        let version = try Spawn.run([try BuiltProducts.path(of: "lazy-pagesd"), "-V"])
        #expect(version.exitCode == 0)
        #expect(version.stdout.contains("CRIU 4.2"), "\(version.stdout)")
    }
}
