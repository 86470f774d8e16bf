import Foundation
import LazyPagesControl
import RestoreSimulator
import TestSupport
import Testing

/// Serve mode keeps the standalone promise: whatever ends a job — cancel, failure, the shutdown timeout, SIGKILL of
/// the daemon — no process runs on with wrong memory and none hangs. CRIU jobs are played by `lazy-pages
/// restore-sim` (lp-workload processes that check every byte they own), Firecracker jobs by `fc-emulator`.
@Suite(.serialized) struct ServeSafetyTests {
    /// Two tasks of 8 MiB: long enough that a fault-only restore is still running when the test acts.
    static let images: String = {
        let directory = try! makeTemporaryDirectory("lp-serve-safety")
        try! ImageLayout.mixed.write(to: directory, tasks: 2, bytesPerTask: 8 << 20)
        return directory
    }()

    /// A CRIU job whose workloads are handed over and then wait (`idle`) for a minute before checking: the job is
    /// running with every page still missing.
    static func startIdleCRIUJob(_ daemon: ServiceDaemon, _ work: String) throws -> (String, () throws -> Spawn.Output) {
        let id = try daemon.add(["criu", "-D", images, "-W", work, "--no-background"])
        let simulator = runInBackground([
            try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", images, "-W", work, "--scenario", "idle",
            "--release-after", "15", "--timeout", "60", "--workload", try BuiltProducts.path(of: "lp-workload"),
        ])
        try daemon.waitUntil(id, is: .running)
        return (id, simulator)
    }

    /// A Firecracker job on `memory` with its VM (fc-emulator) connected and the job running.
    static func startVMJob(_ daemon: ServiceDaemon, _ memory: MemoryFixture) throws -> Emulator {
        let socket = memory.socket("vm")
        let vmJob = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile])
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"], wait: true)
        try vm.waitForLine(startingWith: "READY")
        try daemon.waitUntil(vmJob, is: .running)
        return vm
    }

    static func expectKilledNotZeroFilled(_ output: Spawn.Output, _ context: String) {
        let result = RestoreSimOutput(output.stdout)
        #expect(result.wrongPageLines.isEmpty, "a process ran on with wrong memory: \(result.text) \(context)")
        #expect(!result.timedOut, "a process hung: \(result.text)")
        #expect(result.taskStatuses == [-SIGKILL, -SIGKILL], "\(result.text) \(context)")
    }

    @Test(.timeLimit(.minutes(20))) func cancelOfARunningCRIUJobEndsItsProcessesAndSaysSo() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let (id, simulator) = try Self.startIdleCRIUJob(daemon, work)
        let cancelled = try daemon.cli(["cancel", id, "--json"])
        #expect(cancelled.exitCode == 0, "\(cancelled.stderr)")
        let reply = try JSONDecoder().decode(ControlReply.self, from: Data(cancelled.stdout.utf8))
        #expect(reply.job?.state == .cancelled)
        #expect(reply.job?.reason?.contains("processes of the restore still waiting for pages were killed") == true,
                "\(String(describing: reply.job?.reason))")
        Self.expectKilledNotZeroFilled(try simulator(), daemon.process.stderr)
        let status = try daemon.request(ControlRequest(op: .status, id: id))
        #expect(status.job?.reason == reply.job?.reason)
    }}

    @Test(.timeLimit(.minutes(20))) func cancelOfAJobNotHandedAnythingJustDropsIt() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let id = try daemon.add(["criu", "-D", Self.images, "-W", work])
        let cancelled = try daemon.request(ControlRequest(op: .cancel, id: id))
        #expect(cancelled.job?.state == .cancelled)
        #expect(cancelled.job?.reason?.hasSuffix("no process had been handed over") == true,
                "\(String(describing: cancelled.job?.reason))")
        #expect(access(work + "/lazy-pages.socket", F_OK) != 0)
    }}

    /// A failed job (the restorer hangs up before RSTF): its waiting processes are killed, not zero-filled.
    @Test(.timeLimit(.minutes(20))) func aFailedCRIUJobEndsItsProcesses() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let id = try daemon.add(["criu", "-D", Self.images, "-W", work, "--no-background"])
        let output = try Spawn.run([
            try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", Self.images, "-W", work, "--scenario",
            "verify", "--hang-up-before-rstf", "--timeout", "60", "--workload", try BuiltProducts.path(of: "lp-workload"),
        ], timeoutMilliseconds: 90_000)
        let result = RestoreSimOutput(output.stdout)
        #expect(result.wrongPageLines.isEmpty, "\(result.text)")
        #expect(!result.timedOut, "\(result.text)")
        for status in result.taskStatuses { #expect(status == 0 || status == -SIGKILL, "\(result.text)") }
        let waited = try daemon.request(ControlRequest(op: .wait, id: id, timeoutSeconds: 60))
        #expect(waited.job?.state == .failed)
        #expect(waited.job?.reason?.contains("RSTF") == true, "\(String(describing: waited.job?.reason))")
    }}

    /// `--shutdown-timeout`: a CRIU job still running is cancelled, its processes killed; a VM is killed.
    @Test(.timeLimit(.minutes(20))) func theShutdownTimeoutEndsRunningJobsProcesses() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon(["--shutdown-timeout", "0.2"])
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (id, simulator) = try Self.startIdleCRIUJob(daemon, work)
        let vm = try Self.startVMJob(daemon, memory)
        kill(daemon.process.pid, SIGTERM)
        #expect(daemon.process.wait() == 0, "\(daemon.process.stderr)")
        Self.expectKilledNotZeroFilled(try simulator(), daemon.process.stderr)
        #expect(vm.finish() == .signalled(SIGKILL))
        let log = daemon.process.stderr
        #expect(log.contains("job at shutdown job=\(id) owner=0 reason=the daemon shut down"), "\(log)")
        #expect(log.contains("still waiting for pages were killed"), "\(log)")
    }}

    /// SIGKILL of `lazy-pagesd serve` with a CRIU job and a Firecracker job running: every job's guardian ends its
    /// processes (the CRIU tasks, the VM) before the uffds close.
    @Test(.timeLimit(.minutes(20))) func sigkillOfTheDaemonEndsEveryJobsProcesses() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (_, simulator) = try Self.startIdleCRIUJob(daemon, work)
        let vm = try Self.startVMJob(daemon, memory)
        kill(daemon.process.pid, SIGKILL)
        #expect(daemon.process.wait() == -SIGKILL)
        Self.expectKilledNotZeroFilled(try simulator(), "")
        #expect(vm.finish(timeout: 60) == .signalled(SIGKILL), "\(vm.lines)")
        // The guardians report on the daemon's stderr once they have killed and let go (bounded wait).
        let deadline = ContinuousClock.now + .seconds(30)
        while daemon.process.stderr.components(separatedBy: "went away with a restore in flight").count < 3,
            ContinuousClock.now < deadline
        {
            usleep(10_000)
        }
        #expect(daemon.process.stderr.components(separatedBy: "went away with a restore in flight").count == 3,
                "\(daemon.process.stderr)")
    }}

    /// SIGKILL at random moments of fault-serving CRIU restores (fork storms, background fill on and off) beside a
    /// Firecracker VM checking every byte: never a wrong page, never a hang.
    @Test(.timeLimit(.minutes(20))) func sigkillAtRandomMomentsNeverLeavesAWrongPage() async throws { try await oneHeavyTestAtATime {
        let kills = Int(ProcessInfo.processInfo.environment["LP_SERVE_KILLS"] ?? "") ?? 4
        var rng = SystemRandomNumberGenerator()
        var killedMidRestore = 0
        for round in 0..<kills {
            let daemon = try ServiceDaemon()
            let memory = try MemoryFixture(bytes: 4 << 20)
            let socket = memory.socket("vm")
            var simulators: [() throws -> Spawn.Output] = []
            var works: [String] = []
            for index in 0..<2 {
                let work = try makeTemporaryDirectory("lp-serve-work")
                works.append(work)
                let fill = (round + index) % 2 == 0 ? ["--no-background"] : []
                _ = try daemon.add(["criu", "-D", Self.images, "-W", work] + fill)
                simulators.append(runInBackground([
                    try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", Self.images, "-W", work,
                    "--scenario", index == 0 ? "fork-storm" : "verify", "--seed", "\(round + 1)", "--timeout", "60",
                    "--workload", try BuiltProducts.path(of: "lp-workload"),
                ]))
            }
            _ = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile])
            let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:4M"], threads: 2)
            usleep(UInt32.random(in: 20_000...150_000, using: &rng))  // the random moment (not a synchronisation)
            kill(daemon.process.pid, SIGKILL)
            _ = daemon.process.wait()
            for simulator in simulators {
                let result = RestoreSimOutput(try simulator().stdout)
                #expect(result.wrongPageLines.isEmpty, "round \(round): \(result.text)")
                #expect(!result.timedOut, "round \(round): \(result.text)")
                for status in result.taskStatuses { #expect(status == 0 || status == -SIGKILL, "\(result.text)") }
                if result.taskStatuses.contains(-SIGKILL) { killedMidRestore += 1 }
            }
            let ending = vm.finish(timeout: 60)
            #expect(ending == .exited(0) || ending == .signalled(SIGKILL), "round \(round): \(vm.lines)")
            #expect(!vm.lines.contains { $0.contains("FAIL") }, "\(vm.lines)")
            for work in works { try? FileManager.default.removeItem(atPath: work) }
        }
        print("serve: \(kills) daemon kills, \(killedMidRestore) CRIU restores killed mid-restore by their guardians, 0 wrong pages")
    }}

    /// `list`/`status` count the announced tasks' pages: forked children's copies do not inflate `pagesHome`.
    @Test(.timeLimit(.minutes(20))) func forkedChildrenDoNotCountAgainstTheParentsPages() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let work = try makeTemporaryDirectory("lp-serve-work")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let id = try daemon.add(["criu", "-D", Self.images, "-W", work, "--no-background"])
        let output = try Spawn.run([
            try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", Self.images, "-W", work, "--scenario",
            "fork-storm", "--timeout", "60", "--workload", try BuiltProducts.path(of: "lp-workload"),
        ], timeoutMilliseconds: 90_000)
        #expect(output.exitCode == 0, "\(output.stdout)")
        let job = try #require(try daemon.request(ControlRequest(op: .wait, id: id, timeoutSeconds: 60)).job)
        #expect(job.state == .completed)
        #expect(job.counters["forks", default: 0] > 0)
        #expect(job.counters["pagesCopiedToForks", default: 0] > 0)
        #expect(job.pagesHome <= job.pagesExpected, "\(job.pagesHome)/\(job.pagesExpected)")
    }}
}
