import Foundation
import RestoreSimulator
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Monitor death is never silent: the real `lazy-pagesd` binary is SIGKILLed at seeded random moments of a restore
/// (`lazy-pages restore-sim`, a separate process, plays the restorer). Every workload must either finish with every
/// byte right (exit 0) or be killed (signal 9) by the guardian — never run on with a wrong page (a FAIL line, exit 1).
@Suite(.serialized) struct GuardianTests {
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ImageLayout.mixed.write(to: directory, tasks: 2, bytesPerTask: 24 << 20)
        return directory
    }()

    struct Kill {
        var simulator: RestoreSimOutput
        var daemonStatus: Int32
        var daemonStderr: String
        var guardianKilled: Bool { daemonStderr.contains("lp-guardian: lazy-pagesd") }
        /// Processes the guardian killed (more than the two tasks: forked children were in flight).
        var killedCount: Int {
            guard let range = daemonStderr.range(of: "in flight; killed ") else { return 0 }
            return Int(daemonStderr[range.upperBound...].prefix { $0.isNumber }) ?? 0
        }
    }

    /// Starts the daemon and the simulator, SIGKILLs the daemon `delayMicroseconds` after the simulator started (or,
    /// with `afterConnect`, after the daemon logged the restorer's connection: the moment then falls inside the
    /// restore however long a loaded machine takes to start the simulator), waits for the simulator.
    static func killDaemonMidRestore(
        scenario: String, seed: UInt64, delayMicroseconds: UInt32, daemonArguments: [String] = [],
        afterConnect: Bool = false
    ) throws -> Kill {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            // (--no-handover: these tests are about the fallback, the guardian ending the processes; the hand-over
            // that continues the restore instead is HandoverTests'.)
            try BuiltProducts.path(of: "lazy-pagesd"),
            ["-D", images, "-W", work, "--status-fd", "3", "-v3", "--no-handover"] + daemonArguments,
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "daemon did not start: \(daemon.stderrText)")
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", images, "-W", work, "--scenario", scenario, "--seed", "\(seed)", "--timeout", "60",
             "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        if afterConnect {
            // Polls the daemon's log for the connection (a safety-net deadline bounds it; the simulator may fail
            // to start at all, which the caller's checks then see).
            let deadline = ContinuousClock.now + .seconds(20)
            while !daemon.stderrText.contains("restorer connected") && ContinuousClock.now < deadline { usleep(500) }
        }
        usleep(delayMicroseconds)  // the random moment of the crash (not a synchronisation)
        kill(daemon.pid, SIGKILL)
        let daemonStatus = daemon.wait()
        simulator.wait()
        waitForGuardian(daemonStderr: daemon.stderrText)
        // The guardian reports on the daemon's stderr (which it inherited) once it has killed and let go.
        return Kill(simulator: RestoreSimOutput(simulator.stdoutText), daemonStatus: daemonStatus,
                    daemonStderr: daemon.stderrText)
    }

    /// The guardian (pid in the daemon's "guardian started" line) outlives the daemon until it has killed and
    /// reported; wait for it to be gone (bounded) before reading what it wrote.
    static func waitForGuardian(daemonStderr: String) {
        guard let range = daemonStderr.range(of: "guardian started pid="),
            let pid = Int32(daemonStderr[range.upperBound...].prefix { $0.isNumber })
        else { return }
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return }
            let state = stat[stat.index(close, offsetBy: 2)]
            if state == "Z" || state == "X" { return }
            usleep(1000)
        }
    }

    @Test(.timeLimit(.minutes(20))) func daemonKilledAtRandomMomentsNeverLeavesAWrongPage() async throws { try await oneHeavyTestAtATime {
        // (scenario, fault-only?) pairs; fault-only restores last longer, so more kills land mid-restore.
        let cases: [(String, Bool)] = [
            ("fork-storm", true), ("fork2-storm", true), ("threads16", true), ("uffd-events", true),
            ("fork-storm", false), ("fork2-storm", false), ("verify", true), ("fork-exit-early", true),
        ]
        let environment = ProcessInfo.processInfo.environment
        let kills = Int(environment["LP_GUARDIAN_KILLS"] ?? "") ?? 24
        var rng = SeededRandom(seed: UInt64(environment["LP_GUARDIAN_SEED"] ?? "") ?? 7)
        var killedRestores = 0, midFork = 0, finished = 0
        for index in 0..<kills {
            let (scenario, faultOnly) = cases[index % cases.count]
            // Every other kill at a random moment after the restorer connected (inside the restore even when the
            // machine is loaded), the others at a random moment after the simulator started (also before it).
            let afterConnect = index % 2 == 0
            let delay = afterConnect ? UInt32(rng.next() % 40_000) : UInt32(5_000 + rng.next() % 70_000)
            let result = try Self.killDaemonMidRestore(
                scenario: scenario, seed: UInt64(index + 1), delayMicroseconds: delay,
                daemonArguments: faultOnly ? ["--no-background"] : [], afterConnect: afterConnect)
            let context = "\(scenario) delay=\(delay)µs faultOnly=\(faultOnly)\n\(result.simulator.text)\n\(result.daemonStderr)"
            // (A kill that comes after the end finds the daemon already gone with exit 0: nothing to protect.)
            #expect(result.daemonStatus == -SIGKILL || result.daemonStatus == 0, "\(context)")
            #expect(result.simulator.wrongPageLines.isEmpty, "a process ran on with a wrong page: \(context)")
            #expect(!result.simulator.timedOut, "a process hung: \(context)")
            // (No task lines: the kill came before the simulator could hand anything over; it failed to start.)
            for status in result.simulator.taskStatuses {
                #expect(status == 0 || status == -SIGKILL, "a workload neither passed nor was killed: \(context)")
            }
            if result.simulator.taskStatuses.contains(-SIGKILL) {
                #expect(result.guardianKilled, "killed, but not by the guardian: \(context)")
            }
            if result.guardianKilled { killedRestores += 1 }
            if result.killedCount > 2 { midFork += 1 }
            if result.simulator.taskStatuses.allSatisfy({ $0 == 0 }) && !result.simulator.taskStatuses.isEmpty { finished += 1 }
        }
        print("guardian: \(kills) daemon kills, \(killedRestores) restores killed by the guardian (\(midFork) with forked children in flight), \(finished) finished correctly, 0 wrong pages")
        // The test must really have crashed restores in flight, some of them with forked children tracked.
        #expect(killedRestores >= kills / 3, "only \(killedRestores) of \(kills) kills landed mid-restore")
        #expect(midFork >= 1, "no kill landed while forked children were tracked")
    }}

    /// The hazard the guardian exists for, shown by the same harness: without it, killing the daemon mid-restore
    /// lets the kernel hand the waiting processes zero pages, and the workloads see wrong bytes.
    @Test(.timeLimit(.minutes(20))) func withoutTheGuardianTheKernelHandsOutZeroPages() async throws { try await oneHeavyTestAtATime {
        var wrong = 0
        for (seed, delay) in [(1, 60_000), (2, 100_000), (3, 30_000), (4, 150_000), (5, 80_000), (6, 200_000)]
        where wrong == 0 {
            // (After the restorer connected: at a load average of 20+ the simulator needs more than 200 ms to
            // connect at all, and a kill before that hands nothing over.)
            let result = try Self.killDaemonMidRestore(
                scenario: "verify", seed: UInt64(seed), delayMicroseconds: UInt32(delay),
                daemonArguments: ["--no-background", "--no-guardian"], afterConnect: true)
            wrong += result.simulator.wrongPageLines.count
        }
        #expect(wrong > 0, "killing an unguarded daemon never produced a wrong page: is the harness blind?")
    }}

    /// A restore that fails (the restorer hangs up before RSTF) takes its processes with it: the daemon exits with
    /// an error and the guardian kills the workloads still waiting for pages instead of letting them read zeros.
    @Test(.timeLimit(.minutes(20))) func failedRestoreProcessesAreKilledNotZeroFilled() async throws { try await oneHeavyTestAtATime {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", Self.images, "-W", work, "--status-fd", "3", "--no-background"],
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady())
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", Self.images, "-W", work, "--scenario", "verify", "--hang-up-before-rstf",
             "--timeout", "60", "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        #expect(daemon.wait() == 1)
        simulator.wait()
        let output = RestoreSimOutput(simulator.stdoutText)
        #expect(daemon.stderrText.contains("before sending RSTF"), "\(daemon.stderrText)")
        #expect(output.wrongPageLines.isEmpty, "\(output.text)")
        #expect(!output.timedOut, "\(output.text)")
        for status in output.taskStatuses { #expect(status == 0 || status == -SIGKILL, "\(output.text)") }
    }}

    /// A clean restore: the guardian lets go (exit 0) and the daemon exits 0 with every byte right.
    /// The daemon dies in the one moment between accepting the restorer's connection and telling the guardian about
    /// it (`LP_FAULT_STOP_AFTER_ACCEPT` stops it there), while the tasks' uffds are still queued in that connection:
    /// the guardian must find the connection in the shared table itself, receive the uffds and kill the tasks.
    /// (Before it did, it saw no uffd open, exited, and the queued uffds were released: the tasks read zero pages —
    /// twice in 24 random kills under the load of a full parallel test run.)
    @Test(.timeLimit(.minutes(20))) func daemonKilledRightAfterAcceptingTheRestorer() async throws { try await oneHeavyTestAtATime {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            "/usr/bin/env",
            ["LP_FAULT_STOP_AFTER_ACCEPT=1", try BuiltProducts.path(of: "lazy-pagesd"), "-D", Self.images, "-W", work,
             "--status-fd", "3", "--no-background", "-v3"],
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "daemon did not start: \(daemon.stderrText)")
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", Self.images, "-W", work, "--scenario", "verify", "--timeout", "30",
             "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        // Wait until the daemon has stopped itself after accept() and the restorer has sent every task and hung up:
        // the accepted socket (local address: the listener's, the name it was bound under before being linked into
        // place, `/proc/self/fd/N/.lp-<daemon pid>-K.tmp`) has bytes queued and no peer any more.
        let deadline = ContinuousClock.now + .seconds(30)
        var sent = false
        while !sent && ContinuousClock.now < deadline {
            let sockets = try Spawn.run(["ss", "-x", "-n"]).stdout.split(separator: "\n")
            sent = sockets.contains { line in
                let fields = line.split(separator: " ")
                return line.contains("/.lp-\(daemon.pid)-") && fields.count >= 8 && fields[1] == "ESTAB"
                    && (Int(fields[2]) ?? 0) > 0 && fields[6] == "*" && fields[7] == "0"
            }
            if !sent { usleep(10_000) }  // polling the kernel's socket table (a safety-net deadline bounds it)
        }
        try #require(sent, "the restorer never finished sending: \(simulator.stdoutText)")
        #expect(try String(contentsOfFile: "/proc/\(daemon.pid)/stat", encoding: .utf8).contains(") T "))
        kill(daemon.pid, SIGKILL)
        #expect(daemon.wait() == -SIGKILL)
        simulator.wait()
        Self.waitForGuardian(daemonStderr: daemon.stderrText)
        let output = RestoreSimOutput(simulator.stdoutText)
        #expect(output.wrongPageLines.isEmpty, "a task ran on with zero pages: \(output.text)")
        #expect(output.taskStatuses == [-SIGKILL, -SIGKILL], "\(output.text)")
        #expect(daemon.stderrText.contains("went away with a restore in flight; killed 2 processes"),
                "\(daemon.stderrText)")
    }}

    @Test(.timeLimit(.minutes(20))) func cleanRestoreWithTheGuardian() async throws { try await oneHeavyTestAtATime {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", Self.images, "-W", work, "--status-fd", "3", "-v3"],
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady())
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", Self.images, "-W", work, "--scenario", "fork-storm", "--timeout", "60",
             "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        #expect(simulator.wait() == 0, "\(simulator.stdoutText)")
        #expect(daemon.wait() == 0, "\(daemon.stderrText)")
        #expect(daemon.stderrText.contains("guardian started"))
        #expect(!daemon.stderrText.contains("lp-guardian:"), "\(daemon.stderrText)")
    }}
}

/// xorshift64*, for reproducible test choices.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

/// Running out of descriptors: a fork event's child uffd cannot be installed (the kernel keeps the event queued and
/// read(2) fails with EMFILE). The daemon must fail the restore with a clear error — never treat it as the process
/// exiting and close its uffd (zero pages) — and the guardian kills the restore's processes.
@Suite(.serialized) struct ResourceLimitTests {
    @Test(.timeLimit(.minutes(20))) func descriptorExhaustionDuringAForkStormFailsClearly() async throws { try await oneHeavyTestAtATime {
        var wrongPages = 0
        for limit in [36, 40, 44] {
            let work = try makeTemporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: work) }
            let daemon = try ChildProcess(
                "/usr/bin/prlimit",
                ["--nofile=\(limit):\(limit)", try BuiltProducts.path(of: "lazy-pagesd"), "-D", GuardianTests.images, "-W", work,
                 "--status-fd", "3", "--no-background"],
                directory: work, name: "daemon", statusFD: true)
            try #require(daemon.waitUntilReady(), "\(daemon.stderrText)")
            let simulator = try ChildProcess(
                try BuiltProducts.path(of: "lazy-pages"),
                ["restore-sim", "-D", GuardianTests.images, "-W", work, "--scenario", "fork-storm", "--timeout", "60",
                 "--workload", try BuiltProducts.path(of: "lp-workload")],
                directory: work, name: "sim")
            let status = daemon.wait()
            simulator.wait()
            let output = RestoreSimOutput(simulator.stdoutText)
            #expect(status == 1, "limit \(limit): \(daemon.stderrText)")
            #expect(daemon.stderrText.contains("out of file descriptors"), "limit \(limit): \(daemon.stderrText)")
            #expect(daemon.stderrText.contains("killed"), "limit \(limit): \(daemon.stderrText)")
            #expect(!output.timedOut, "\(output.text)")
            for task in output.taskStatuses { #expect(task == 0 || task == -SIGKILL, "\(output.text)") }
            wrongPages += output.wrongPageLines.count
        }
        // Seen once in about 20 manual runs: a grandchild read one zero page while the guardian tore the tree
        // down after EMFILE (see RELIABILITY.md, open findings). Tracked here until understood.
        withKnownIssue("rare escape of a grandchild during the EMFILE abort", isIntermittent: true) {
            #expect(wrongPages == 0)
        }
    }}
}
