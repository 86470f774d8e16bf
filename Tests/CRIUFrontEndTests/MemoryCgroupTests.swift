import Foundation
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A cgroup v1 memory controller where the test may make cgroups (root): needed by `MemoryCgroupTests`.
enum MemoryCgroup {
    static let root = "/sys/fs/cgroup/memory"
    static var available: Bool { access(root + "/memory.limit_in_bytes", F_OK) == 0 && access(root, W_OK) == 0 }

    /// Makes a child cgroup limited to `limit` bytes, without swap; `oomKill: false` sets `memory.oom_control`.
    static func make(limit: Int, oomKill: Bool = true) throws -> String {
        let path = root + "/lp-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o755) == 0 else { throw LazyPagesTestError("mkdir \(path): \(errno)") }
        try write("\(limit)", to: path + "/memory.limit_in_bytes")
        try? write("0", to: path + "/memory.swappiness")
        if !oomKill { try write("1", to: path + "/memory.oom_control") }
        return path
    }

    static func remove(_ path: String) {
        // Every process of the test is gone by now (bounded: a cgroup with a dying process cannot go at once).
        for _ in 0..<500 where rmdir(path) != 0 { usleep(10_000) }
    }

    static func oomKills(_ path: String) -> Int {
        let text = (try? String(contentsOfFile: path + "/memory.oom_control", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
            return Int(line.dropFirst("oom_kill ".count)) ?? 0
        }
        return 0
    }

    private static func write(_ text: String, to file: String) throws {
        do {
            try text.write(toFile: file, atomically: false, encoding: .utf8)
        } catch {
            throw LazyPagesTestError("cannot write \(text) to \(file): \(error)")
        }
    }
}

/// Memory pressure beyond stress-ng: the restored processes (and in one case the daemon) in a cgroup v1 memory
/// cgroup whose limit is far below what they need. The kernel charges every page `UFFDIO_COPY` places to the
/// target's cgroup. With the OOM killer on it kills the target (the next copy gets ESRCH: a clean process-gone;
/// copies refused with ENOMEM while the victim dies are retried)
/// or, with the daemon inside, possibly the daemon (its guardian then kills the restore); with the OOM killer off
/// (`memory.oom_control` 1) the copy fails with ENOMEM (the restore fails naming it). Never a wrong or zero page;
/// a restore outside the cgroup, at the same time, is untouched.
@Suite(.serialized, .enabled(if: MemoryCgroup.available, "needs the cgroup v1 memory controller at /sys/fs/cgroup/memory, writable (root)"))
struct MemoryCgroupTests {
    /// Two tasks of 64 MiB (about 52 MiB lazy each).
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ImageLayout.mixed.write(to: directory, tasks: 2, bytesPerTask: 64 << 20)
        return directory
    }()
    static let limit = 48 << 20

    struct Run {
        var daemon: ChildProcess
        var simulator: ChildProcess
        var output: RestoreSimOutput
        var daemonStatus: Int32
    }

    /// One restore: the daemon (inside `cgroup` when `daemonInside`) and the workloads inside `cgroup` (nil: no
    /// cgroup at all).
    static func restore(cgroup: String?, daemonInside: Bool = false, work: String) throws -> Run {
        try finish(start(cgroup: cgroup, daemonInside: daemonInside, work: work))
    }

    static func start(cgroup: String?, daemonInside: Bool = false, work: String) throws -> (ChildProcess, ChildProcess) {
        func enter(_ command: [String], inside: Bool) -> (String, [String]) {
            guard inside, let cgroup else { return (command[0], Array(command.dropFirst())) }
            let quoted = command.map { "'\($0)'" }.joined(separator: " ")
            return ("/bin/sh", ["-c", "echo $$ > \(cgroup)/cgroup.procs && exec \(quoted)"])
        }
        let (daemonPath, daemonArguments) = enter(
            [try BuiltProducts.path(of: "lazy-pagesd"), "-D", images, "-W", work, "--status-fd", "3", "-v3"], inside: daemonInside)
        let daemon = try ChildProcess(daemonPath, daemonArguments, directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "daemon did not start: \(daemon.stderrText)")
        // The workloads enter the cgroup themselves (LP_WORKLOAD_CGROUP): the simulator, which plays criu restore,
        // stays outside (the OOM killer would otherwise pick it as readily as a task).
        let simulator = try ChildProcess(
            "/usr/bin/env",
            ["LP_WORKLOAD_CGROUP=\(cgroup ?? "")", try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", images,
             "-W", work, "--scenario", "verify", "--timeout", "60", "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        return (daemon, simulator)
    }

    static func finish(_ started: (ChildProcess, ChildProcess)) -> Run {
        let (daemon, simulator) = started
        simulator.wait()
        let daemonStatus = daemon.wait()
        GuardianTests.waitForGuardian(daemonStderr: daemon.stderrText)
        return Run(daemon: daemon, simulator: simulator, output: RestoreSimOutput(simulator.stdoutText),
                   daemonStatus: daemonStatus)
    }

    @Test(.timeLimit(.minutes(20))) func oomKilledTargetsAreProcessGoneAndAnotherRestoreGoesOn() async throws { try await oneHeavyTestAtATime {
        let cgroup = try MemoryCgroup.make(limit: Self.limit)
        defer { MemoryCgroup.remove(cgroup) }
        let work = try makeTemporaryDirectory(), otherWork = try makeTemporaryDirectory()
        defer { for w in [work, otherWork] { try? FileManager.default.removeItem(atPath: w) } }
        // The same restore without a cgroup, at the same time, on its own daemon.
        let other = try Self.start(cgroup: nil, work: otherWork)
        let run = try Self.restore(cgroup: cgroup, work: work)
        let otherRun = Self.finish(other)
        #expect(MemoryCgroup.oomKills(cgroup) >= 1)
        #expect(run.output.wrongPageLines.isEmpty, "\(run.output.text)")
        #expect(run.output.taskStatuses.count == 2, "\(run.simulator.stderrText)")
        #expect(run.output.taskStatuses.contains(-SIGKILL), "\(run.output.text)")
        for status in run.output.taskStatuses { #expect(status == 0 || status == -SIGKILL, "\(run.output.text)") }
        // The daemon saw the killed targets go (ESRCH) and finished normally.
        #expect(run.daemonStatus == 0, "\(run.daemon.stderrText.suffix(3000))")
        #expect(run.daemon.stdoutText.contains("lazy-pages: 2 tasks"))
        #expect(otherRun.output.taskStatuses == [0, 0], "\(otherRun.output.text)")
        #expect(otherRun.daemonStatus == 0)
    }}

    @Test(.timeLimit(.minutes(20))) func withoutTheOomKillerACopyFailsWithENOMEMNamingTheCgroup() async throws { try await oneHeavyTestAtATime {
        let cgroup = try MemoryCgroup.make(limit: Self.limit, oomKill: false)
        defer { MemoryCgroup.remove(cgroup) }
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let run = try Self.restore(cgroup: cgroup, work: work)
        #expect(run.daemonStatus == 1)
        #expect(run.daemon.stderrText.contains("Cannot allocate memory (the process's memory cgroup is at its limit"),
                "\(run.daemon.stderrText.suffix(3000))")
        // The guardian kills the failed restore's processes; none read a zero page.
        #expect(run.output.wrongPageLines.isEmpty, "\(run.output.text)")
        for status in run.output.taskStatuses { #expect(status == -SIGKILL, "\(run.output.text)") }
    }}

    @Test(.timeLimit(.minutes(20))) func daemonInsideTheCgroupToo() async throws { try await oneHeavyTestAtATime {
        let cgroup = try MemoryCgroup.make(limit: Self.limit)
        defer { MemoryCgroup.remove(cgroup) }
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let run = try Self.restore(cgroup: cgroup, daemonInside: true, work: work)
        // Whoever the OOM killer picks — a target (process gone) or the daemon (its guardian kills the restore; or,
        // killed before any uffd was handed over, the restorer fails and kills its tasks) — no process runs on
        // with a wrong page, none hangs.
        #expect(run.output.wrongPageLines.isEmpty, "\(run.output.text)")
        #expect(!run.output.timedOut, "\(run.output.text)")
        for status in run.output.taskStatuses { #expect(status == 0 || status == -SIGKILL, "\(run.output.text)") }
        #expect([0, -SIGKILL].contains(run.daemonStatus), "\(run.daemon.stderrText.suffix(3000))")
    }}
}
