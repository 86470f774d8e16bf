import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// Serve-mode jobs through a real `criu dump` / `criu restore --lazy-pages` of `lp-criu-workload` (the reference
/// CRIU 4.2), each beside a Firecracker job (fc-emulator), for every way a job can end: cancel mid-restore, the page
/// server lost, the pages file lost, the uffd bound reached, `--shutdown-timeout` on SIGTERM, SIGKILL of
/// `lazy-pagesd serve`. Each time the restored tree is then woken and checks every byte it owns: no process may
/// read a wrong page and none may hang; every process is either verified (`OK`) or gone, and the job's final state
/// and reason are what `lazy-pages status` (or, once the daemon is gone, its log) says.
///
/// A job restores with `--no-background`, so that when the test acts its processes run with every lazy page still
/// missing (the workload touches nothing until it is woken).
@Suite(
    "Serve jobs through real criu restore --lazy-pages", .serialized, .timeLimit(.minutes(20)),
    .enabled(if: RealCRIU.isAvailable, "needs the reference criu 4.2 ($LP_CRIU or ../shared/criu/build-criu) and root"))
struct ServeRealCRIUTests {
    /// How the restored tree ended after it was woken.
    enum Ending: Equatable {
        /// Every byte checked, the first process's `OK` line.
        case verified
        /// Ended (SIGKILL by its job or guardian, or SIGBUS on a poisoned page) before it could report.
        case ended
    }

    /// Dumps a `mode` workload, adds its CRIU job (`extra` job options), restores it with real CRIU and waits until
    /// the job is running. (The fork workload is dumped as one task; it forks its tree when woken.)
    static func restoredJob(_ daemon: ServiceDaemon, mode: String = "fork", extra: [String] = []) throws -> (CRIURun, String) {
        let run = try CRIURun(mode: mode, mib: 16)
        try run.dump()
        let id = try daemon.add(["criu", "-D", run.images, "-W", run.work, "--no-background"] + extra)
        try run.restore()
        try daemon.waitUntil(id, is: .running)
        return (run, id)
    }

    /// Wakes the restored tree and checks the promise: an `OK` line (never `FAIL`: a wrong page) or a tree that
    /// ended; never a hang; and in the end no process of the tree left.
    @discardableResult
    static func wakeAndCheck(_ run: CRIURun, _ context: @autoclosure () -> String,
                             sourceLocation: SourceLocation = #_sourceLocation) -> Ending? {
        run.wake()
        var ending: Ending?
        do {
            let line = try run.result(timeout: 90)
            #expect(line.hasPrefix("OK "), "a restored process read a wrong page: \(line)\n\(context())",
                    sourceLocation: sourceLocation)
            ending = .verified
        } catch {
            let text = "\(error)"
            if text.contains("exited without") {
                ending = .ended
            } else {
                Issue.record("the restored tree hung: \(text)\n\(context())", sourceLocation: sourceLocation)
            }
        }
        let deadline = ContinuousClock.now + .seconds(60)
        var left = CRIURun.processGroup(run.pid)
        while !left.isEmpty && ContinuousClock.now < deadline {
            usleep(10_000)
            left = CRIURun.processGroup(run.pid)
        }
        #expect(left.isEmpty, "processes of the restored tree still there (hung): \(left)\n\(context())",
                sourceLocation: sourceLocation)
        return ending
    }

    /// `lazy-pages status ID --json`: the job as the CLI reports it.
    static func status(_ daemon: ServiceDaemon, _ id: String) throws -> JobInfo {
        let output = try daemon.cli(["status", id, "--json"])
        #expect(output.exitCode == 0, "\(output.stderr)")
        let reply = try JSONDecoder().decode(ControlReply.self, from: Data(output.stdout.utf8))
        let job = try #require(reply.job, "\(output.stdout)")
        print("serve+criu: lazy-pages status \(id): \(job.state.rawValue): \(job.reason ?? "-")")
        return job
    }

    /// Waits (bounded) for the job to end and returns it as `lazy-pages status` reports it.
    static func finalStatus(_ daemon: ServiceDaemon, _ id: String) throws -> JobInfo {
        _ = try daemon.request(ControlRequest(op: .wait, id: id, timeoutSeconds: 120))
        return try status(daemon, id)
    }

    /// The VM beside a CRIU job whose ending must not touch it: it is served to the end, every byte checked.
    static func expectUntouched(_ vm: Emulator, sourceLocation: SourceLocation = #_sourceLocation) {
        vm.go()
        #expect(vm.finish() == .exited(0), "\(vm.lines)", sourceLocation: sourceLocation)
        #expect(!vm.lines.contains { $0.contains("FAIL") }, "\(vm.lines)", sourceLocation: sourceLocation)
    }

    @Test("cancel mid-restore: the job's processes are killed, never zero-filled; the VM beside it is served")
    func cancelMidRestore() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (run, id) = try Self.restoredJob(daemon)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        let cancelled = try daemon.cli(["cancel", id, "--json"])
        #expect(cancelled.exitCode == 0, "\(cancelled.stderr)")
        let reply = try JSONDecoder().decode(ControlReply.self, from: Data(cancelled.stdout.utf8))
        #expect(reply.job?.state == .cancelled)
        #expect(Self.wakeAndCheck(run, run.logs() + daemon.process.stderr) == .ended)
        let job = try Self.status(daemon, id)
        #expect(job.state == .cancelled)
        #expect(job.reason?.contains("still waiting for pages were killed") == true, "\(String(describing: job.reason))")
        Self.expectUntouched(vm)
    }}

    @Test("source lost: CRIU's page server SIGKILLed mid-restore; the job fails, its processes end, no zero page")
    func pageServerLost() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon(["--allow-page-server", "127.0.0.1"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let run = try CRIURun(mode: "fork", mib: 16)
        try run.dump()
        let (server, port) = try run.startCRIUPageServer()
        let id = try daemon.add([
            "criu", "-D", run.images, "-W", run.work, "--no-background", "--page-server", "127.0.0.1:\(port)",
        ])
        try run.restore()
        try daemon.waitUntil(id, is: .running)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        kill(server.pid, SIGKILL)
        _ = try server.wait()
        #expect(Self.wakeAndCheck(run, run.logs() + daemon.process.stderr) == .ended)
        let job = try Self.finalStatus(daemon, id)
        #expect(job.state == .failed, "\(job.state) \(String(describing: job.reason))")
        #expect(job.reason?.contains("page server") == true, "\(String(describing: job.reason))")
        Self.expectUntouched(vm)
    }}

    @Test("corrupt image: the pages file truncated mid-restore; the job fails, its processes end, no zero page")
    func pagesFileTruncated() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (run, id) = try Self.restoredJob(daemon)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        let pagesFiles = try FileManager.default.contentsOfDirectory(atPath: run.images)
            .filter { $0.hasPrefix("pages-") && $0.hasSuffix(".img") }
        #expect(!pagesFiles.isEmpty)
        for file in pagesFiles { #expect(truncate(run.images + "/" + file, 0) == 0, "truncate \(file): errno \(errno)") }
        #expect(Self.wakeAndCheck(run, run.logs() + daemon.process.stderr) == .ended)
        let job = try Self.finalStatus(daemon, id)
        #expect(job.state == .failed, "\(job.state) \(String(describing: job.reason))")
        #expect(job.reason?.contains("killed") == true, "\(String(describing: job.reason))")
        Self.expectUntouched(vm)
    }}

    @Test("bound reached: --max-uffds-per-job 2 and a tree that forks to 5; the job fails, nothing runs on wrong memory")
    func uffdBoundReached() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon(["--max-uffds-per-job", "2"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        // The fork workload is one task when dumped; woken, it forks its tree (2 children, each with a child of its
        // own): the third process is one more than the job may track.
        let (run, id) = try Self.restoredJob(daemon)
        #expect(Self.wakeAndCheck(run, run.logs() + daemon.process.stderr) == .ended)
        let job = try Self.finalStatus(daemon, id)
        #expect(job.state == .failed, "\(job.state) \(String(describing: job.reason))\n\(daemon.process.stderr)")
        #expect(job.reason?.contains("maxTrackedProcesses") == true, "\(String(describing: job.reason))")
        Self.expectUntouched(vm)
    }}

    @Test("bound reached at the hand-over: --max-uffds-per-job 2 for a restored tree of 5; no process on wrong memory")
    func uffdBoundReachedAtTheHandOver() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon(["--max-uffds-per-job", "2"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        let run = try CRIURun(mode: "tree", mib: 8)
        try run.dump()
        let id = try daemon.add(["criu", "-D", run.images, "-W", run.work, "--no-background"])
        // The job refuses the third uffd and fails; criu restore then fails too (and ends the tree), or finishes.
        _ = try? run.restore()
        let job = try Self.finalStatus(daemon, id)
        #expect(job.state == .failed, "\(job.state) \(String(describing: job.reason))\n\(daemon.process.stderr)")
        #expect(job.reason?.contains("maxTrackedProcesses") == true, "\(String(describing: job.reason))")
        #expect(Self.wakeAndCheck(run, run.logs() + daemon.process.stderr) == .ended)
        Self.expectUntouched(vm)
    }}

    @Test("--shutdown-timeout on SIGTERM: a running CRIU job is cancelled and its processes end; the VM too")
    func shutdownTimeout() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon(["--shutdown-timeout", "0.5"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (run, id) = try Self.restoredJob(daemon)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        #expect(try Self.status(daemon, id).state == .running)
        kill(daemon.process.pid, SIGTERM)
        #expect(try daemon.notification(startingWith: "STOPPING=1\n").contains("STATUS=shutting down"))
        #expect(daemon.process.wait() == 0, "\(daemon.process.stderr)")
        let log = daemon.process.stderr
        // The job's final state and reason, as the daemon logged them on its way out.
        #expect(log.contains("job at shutdown job=\(id) owner=0 reason=the daemon shut down"), "\(log)")
        #expect(log.contains("still waiting for pages were killed"), "\(log)")
        #expect(log.contains("state=cancelled"), "\(log)")
        #expect(Self.wakeAndCheck(run, run.logs() + log) == .ended)
        vm.go()
        #expect(vm.finish() == .signalled(SIGKILL), "\(vm.lines)")
        #expect(!vm.lines.contains { $0.contains("FAIL") }, "\(vm.lines)")
    }}

    /// Whatever a daemon's death does to its jobs — guardians killing their processes, or (with a hand-over to a
    /// restarted daemon) the jobs going on — no process reads a wrong page and none hangs.
    @Test("SIGKILL of lazy-pagesd serve mid-restore: no wrong page, no hung process, CRIU tree and VM alike")
    func sigkillOfTheDaemon() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let (run, _) = try Self.restoredJob(daemon)
        let vm = try ServeSafetyTests.startVMJob(daemon, memory)
        kill(daemon.process.pid, SIGKILL)
        #expect(daemon.process.wait() == -SIGKILL)
        Self.wakeAndCheck(run, run.logs() + daemon.process.stderr)
        vm.go()
        let ending = vm.finish(timeout: 90)
        #expect(ending == .exited(0) || ending == .signalled(SIGKILL), "\(vm.lines)")
        #expect(!vm.lines.contains { $0.contains("FAIL") }, "\(vm.lines)")
    }}
}
