import Foundation
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Restores of many small tasks through the real `lazy-pagesd` binary, played by `lazy-pages restore-sim` (one
/// `lp-workload` per task, each checking every byte it owns). CI runs 1 000 tasks; `LP_MANY_TASKS=10000` runs the
/// figure recorded in RELIABILITY.md.
@Suite(.serialized) struct ManyTasksTests {
    static let taskCount: Int = {
        guard let text = getenv("LP_MANY_TASKS"), let count = Int(String(cString: text)), count >= 2 else { return 1000 }
        return min(count, 10_000)
    }()

    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ImageLayout.mixed.write(to: directory, tasks: taskCount, bytesPerTask: 64 << 10)
        return directory
    }()

    static func startDaemon(work: String, _ arguments: [String] = []) throws -> ChildProcess {
        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", images, "-W", work, "--status-fd", "3", "-v3"] + arguments,
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "daemon did not start: \(daemon.stderrText)")
        return daemon
    }

    static func startSimulator(work: String, _ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", images, "-W", work, "--timeout", "600", "--workload", try BuiltProducts.path(of: "lp-workload")]
                + arguments,
            directory: work, name: "sim")
    }

    @Test(.timeLimit(.minutes(20))) func everyTaskOfAManyTaskRestoreVerifiesEveryByte() async throws { try await oneHeavyTestAtATime {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try Self.startDaemon(work: work)
        let simulator = try Self.startSimulator(work: work, ["--scenario", "verify"])
        let simulatorStatus = simulator.wait()
        let daemonStatus = daemon.wait()
        let output = RestoreSimOutput(simulator.stdoutText)
        #expect(simulatorStatus == 0, "\(simulator.stderrText)\n\(output.wrongPageLines.prefix(20))")
        #expect(daemonStatus == 0, "\(daemon.stderrText.suffix(4000))")
        #expect(output.taskStatuses.count == Self.taskCount)
        #expect(output.taskStatuses.allSatisfy { $0 == 0 })
        #expect(output.wrongPageLines.isEmpty)
        #expect(simulator.stdoutText.contains("restore-sim: all \(Self.taskCount) tasks passed"))
        #expect(daemon.stdoutText.contains("lazy-pages: \(Self.taskCount) tasks,"), "\(daemon.stdoutText)")
    }}

    /// More tasks than descriptors (`prlimit --nofile=48`, 64 tasks): the daemon must stop taking uffds while it
    /// still has room — with none free the kernel drops a uffd on receipt, its last copy, and that task would read
    /// zeros — and fail naming RLIMIT_NOFILE; the guardian kills what it took.
    @Test(.timeLimit(.minutes(20))) func moreTasksThanDescriptorsFailsClearly() async throws { try await oneHeavyTestAtATime {
        let images = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: images) }
        try ImageLayout.mixed.write(to: images, tasks: 64, bytesPerTask: 64 << 10)
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            "/usr/bin/prlimit",
            ["--nofile=48:48", try BuiltProducts.path(of: "lazy-pagesd"), "-D", images, "-W", work, "--status-fd", "3"],
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "\(daemon.stderrText)")
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", images, "-W", work, "--scenario", "verify", "--timeout", "60", "--workload",
             try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        let status = daemon.wait()
        simulator.wait()
        GuardianTests.waitForGuardian(daemonStderr: daemon.stderrText)
        #expect(status == 1)
        #expect(daemon.stderrText.contains("out of file descriptors: cannot take the uffd of pid"),
                "\(daemon.stderrText.suffix(3000))")
        #expect(daemon.stderrText.contains("raise RLIMIT_NOFILE"))
        #expect(daemon.stderrText.contains("lp-guardian: lazy-pagesd"), "\(daemon.stderrText.suffix(3000))")
        #expect(RestoreSimOutput(simulator.stdoutText).wrongPageLines.isEmpty)
    }}

    /// The guardian must find every task of a large restore: with a thousand tasks under one restorer it once
    /// read only the first 4 KiB of the restorer's children list (256 of them) and left the rest on zero pages.
    /// No background fill and idle workloads: when the daemon dies every task still has every lazy page pending,
    /// and each starts reading its memory three seconds after the hand-over.
    @Test(.timeLimit(.minutes(20))) func daemonKilledDuringAManyTaskRestoreLeavesNoTaskOnZeroPages() async throws { try await oneHeavyTestAtATime {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try Self.startDaemon(work: work, ["--no-background", "--no-handover"])
        let simulator = try Self.startSimulator(work: work, ["--scenario", "idle", "--release-after", "3"])
        // Kill once every task is announced (polled in the daemon's log; bounded).
        var announced = false
        for _ in 0..<60_000 where !announced {
            announced = daemon.stderrText.contains("all tasks announced")
            if !announced { usleep(10_000) }
        }
        try #require(announced, "\(daemon.stderrText.suffix(4000))")
        kill(daemon.pid, SIGKILL)
        daemon.wait()
        simulator.wait()
        GuardianTests.waitForGuardian(daemonStderr: daemon.stderrText)
        let output = RestoreSimOutput(simulator.stdoutText)
        #expect(output.wrongPageLines.isEmpty, "\(output.wrongPageLines.prefix(20))")
        #expect(output.taskStatuses.count == Self.taskCount,
                "\(simulator.stderrText.suffix(2000))\n\(output.text.suffix(2000))")
        #expect(output.taskStatuses.allSatisfy { $0 == -SIGKILL }, "\(output.text.suffix(4000))")
        #expect(daemon.stderrText.contains("killed \(Self.taskCount) processes"), "\(daemon.stderrText.suffix(4000))")
    }}
}
