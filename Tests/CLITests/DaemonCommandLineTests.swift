import Foundation
import RestoreSimulator
import TestSupport
import Testing

/// `lazy-pagesd` as a user runs it: the built binary, CRIU's option spellings, exit codes and messages.
@Suite(.serialized) struct DaemonCommandLineTests {
    /// A copy of the fixture in a writable directory (the socket and logs go in the work directory).
    static func fixtureCopy() throws -> (images: String, work: String) {
        let root = try makeTemporaryDirectory()
        let images = root + "/images"
        try FileManager.default.copyItem(atPath: SharedFixtures.criuTreeproc, toPath: images)
        try FileManager.default.createDirectory(atPath: root + "/work", withIntermediateDirectories: true)
        return (images, root + "/work")
    }

    /// Starts the daemon in the background; the returned closure waits for it and returns its exit status and output.
    static func startDaemon(_ arguments: [String]) throws -> (Process, () -> (Int32, String, String)) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try BuiltProducts.path(of: "lazy-pagesd"))
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        return (process, {
            let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return (process.terminationStatus, stdout, stderr)
        })
    }

    /// Waits (bounded) until the daemon's socket exists: the daemon listens before it reads the images. With
    /// `afterLogging`, a socket at that name counts only once the daemon's log file holds that line (a stale socket
    /// is there before the daemon replaces it and says so; its inode number may be reused by the new one).
    static func waitForSocket(_ work: String, afterLogging line: String? = nil, in log: String? = nil) throws {
        let deadline = Date().addingTimeInterval(30)
        func listening() -> Bool {
            if let line, let log {
                guard let text = try? String(contentsOfFile: log, encoding: .utf8), text.contains(line) else {
                    return false
                }
            }
            let type = try? FileManager.default.attributesOfItem(atPath: work + "/lazy-pages.socket")[.type]
            return type as? FileAttributeType == .typeSocket
        }
        while !listening() {
            try #require(Date() < deadline, "lazy-pagesd never created its socket")
            usleep(2000)  // polling a file that appears: a safety-bounded wait, not synchronisation of the restore
        }
    }

    @Test(.timeLimit(.minutes(1))) func criuSpellingsServeTheFixtureAndExitZero() throws {
        let (images, work) = try Self.fixtureCopy()
        // A stale socket from an earlier run (nothing listens on it) must not stop the daemon.
        try makeStaleUnixSocket(at: work + "/lazy-pages.socket")
        let pidFile = work + "/daemon.pid"
        let (process, wait) = try Self.startDaemon([
            "-D", images, "-W", work, "-o", "lazy-pages.log", "-v4", "--pidfile", pidFile,
        ])
        try Self.waitForSocket(work, afterLogging: "replaced a stale socket", in: work + "/lazy-pages.log")
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, workDirectory: work, scenario: "verify"))
        try simulation.start()
        let report = try simulation.wait()
        let (status, stdout, stderr) = wait()
        #expect(report.allPassed, "\(describe(report))")
        #expect(status == 0, "stderr: \(stderr)")
        #expect(stdout.contains("lazy-pages: 2 tasks"), "summary missing: \(stdout)")
        #expect(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            == "\(process.processIdentifier)")
        let log = try String(contentsOfFile: work + "/lazy-pages.log", encoding: .utf8)
        #expect(log.contains("RSTF received"))
        #expect(!FileManager.default.fileExists(atPath: work + "/lazy-pages.socket"), "socket left behind")
    }

    @Test(.timeLimit(.minutes(1))) func statusFDGetsOneByteOnceListening() throws {
        let (images, work) = try Self.fixtureCopy()
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try BuiltProducts.path(of: "lazy-pagesd"))
        // Foundation passes the write end through as the same descriptor number when we hand it as stdout of
        // nothing else; simplest: use the daemon's stdout as the status descriptor.
        process.arguments = ["lazy-pages", "--images-dir", images, "--work-dir", work, "--status-fd", "1"]
        process.standardOutput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: true)
        try process.run()
        var byte: UInt8 = 0xff
        #expect(read(fds[0], &byte, 1) == 1)
        #expect(byte == 0)
        #expect(FileManager.default.fileExists(atPath: work + "/lazy-pages.socket"))
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, workDirectory: work, scenario: "exit-mid"))
        try simulation.start()
        _ = try simulation.wait()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        close(fds[0])
    }

    @Test(.timeLimit(.minutes(1))) func restorerHangingUpIsAClearFailure() throws {
        let (images, work) = try Self.fixtureCopy()
        // Without the guardian: the restorer here is the test process itself, and the guardian of a failed restore
        // kills the restorer's descendants — every process any test running in parallel has started (this is what
        // SIGKILLed the fuzzers' daemons and workloads now and then).
        let (_, wait) = try Self.startDaemon(["-D", images, "-W", work, "--no-guardian"])
        try Self.waitForSocket(work)
        var options = SimulationOptions(imagesDirectory: images, workDirectory: work, scenario: "exit-mid")
        options.hangUpBeforeRSTF = true
        let simulation = try RestoreSimulation(options: options)
        try simulation.start()
        let (status, _, stderr) = wait()
        simulation.killAll()  // criu restore kills its tasks when the restore fails
        _ = try simulation.wait()
        #expect(status == 1)
        #expect(stderr.contains("closed the lazy-pages socket before sending RSTF"), "\(stderr)")
    }

    @Test(.timeLimit(.minutes(1))) func corruptImagesAreRefusedNamingTheFile() throws {
        let (images, work) = try Self.fixtureCopy()
        let pagemap = images + "/pagemap-13290.img"
        let handle = try #require(FileHandle(forUpdatingAtPath: pagemap))
        try handle.write(contentsOf: Data([0xde, 0xad, 0xbe, 0xef]))  // the common magic
        try handle.close()
        let (_, wait) = try Self.startDaemon(["-D", images, "-W", work])
        let (status, _, stderr) = wait()
        #expect(status == 1)
        #expect(stderr.contains("pagemap-13290.img"), "\(stderr)")
        #expect(stderr.contains("magic"), "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: work + "/lazy-pages.socket"))
    }

    @Test(.timeLimit(.minutes(1))) func malformedPrefetchProfileIsAStartupError() throws {
        let (images, work) = try Self.fixtureCopy()
        let profile = work + "/profile.txt"
        try "lazy-pages-profile 1\n13290 0x7f0000000000\n13290 zzz\n".write(toFile: profile, atomically: true, encoding: .utf8)
        let (_, wait) = try Self.startDaemon(["-D", images, "-W", work, "--prefetch-profile", profile])
        let (status, _, stderr) = wait()
        #expect(status == 1)
        #expect(stderr.contains("profile.txt"), "\(stderr)")
        #expect(stderr.contains("line 3"), "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: work + "/lazy-pages.socket"))
    }

    @Test(.timeLimit(.minutes(1))) func detachesWithDashDAndWritesThePidfile() throws {
        let (images, work) = try Self.fixtureCopy()
        let pidFile = work + "/daemon.pid"
        // The parent returns at once; the detached daemon keeps serving.
        let launched = try Spawn.run([
            try BuiltProducts.path(of: "lazy-pagesd"), "-D", images, "-W", work, "-d", "--pidfile", pidFile,
            "-o", "daemon.log", "-v3",
        ])
        #expect(launched.exitCode == 0, "\(launched.stderr)")
        try Self.waitForSocket(work)
        let pid = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(kill(pid, 0) == 0, "the detached daemon is not running")
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, workDirectory: work, scenario: "verify"))
        try simulation.start()
        let report = try simulation.wait()
        #expect(report.allPassed, "\(describe(report))")
        // The daemon exits once every page is home (it is not our child: watch /proc).
        let deadline = Date().addingTimeInterval(30)
        while FileManager.default.fileExists(atPath: "/proc/\(pid)") && Date() < deadline { usleep(5000) }
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(pid)"), "the detached daemon did not exit")
        #expect(try String(contentsOfFile: work + "/daemon.log", encoding: .utf8).contains("restore finished"))
    }

    @Test(.timeLimit(.minutes(2))) func demoRunsAndVerifiesEveryByte() throws {
        let output = try Spawn.run(
            [try BuiltProducts.path(of: "lazy-pages"), "demo", "--size", "16M", "--scenario", "fork-storm"],
            timeoutMilliseconds: 100_000)
        #expect(output.exitCode == 0, "\(output.stdout)\n\(output.stderr)")
        #expect(output.stdout.contains("every byte of 2 tasks verified"), "\(output.stdout)")
        #expect(output.stdout.contains("lazy-pages: 2 tasks"), "\(output.stdout)")
    }

    @Test func aMissingImageDirectoryIsOneLine() throws {
        let missing = try makeTemporaryDirectory() + "/nonexistent"
        let output = try Spawn.run([try BuiltProducts.path(of: "lazy-pagesd"), "-D", missing])
        #expect(output.exitCode == 1, "\(output.stderr)")
        let lines = output.stderr.split(separator: "\n")
        #expect(lines.count == 1, "said more than once: \(output.stderr)")
        #expect(lines.first?.hasPrefix("lazy-pagesd: ") == true, "\(output.stderr)")
        #expect(lines.first?.contains(missing) == true, "\(output.stderr)")
    }

    @Test func unknownOptionsAreUsageErrors() throws {
        let output = try Spawn.run([try BuiltProducts.path(of: "lazy-pagesd"), "--no-such-option"])
        #expect(output.exitCode == 64)
        #expect(output.stderr.contains("Unknown option"), "\(output.stderr)")
    }
}
