import CRIUImages
import Foundation
import LazyPagesEngine
import LinuxSupport
import RestoreSimulator
import TestSupport
import Testing

/// Real restores end to end: the daemon's engine against lp-workload processes that fault, fork, mremap, madvise
/// and munmap while the background fill races them. Every workload verifies every byte it owns against the image.
@Suite(.serialized) struct RestoreScenarioTests {
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ScenarioImages.write(to: directory)
        return directory
    }()

    @Test(.timeLimit(.minutes(2)), arguments: [
        "verify", "idle", "fork-storm", "mremap-move", "mremap-grow", "mremap-shrink", "mremap-swap", "madvise",
        "munmap-partial", "threads", "exit-mid", "forward-read",
    ])
    func scenario(_ name: String) throws {
        let run = try RestoreRun.run(images: Self.images, scenario: name, seed: 7)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        let s = run.statistics
        #expect(s[.tasksAnnounced] == 2)
        #expect(s[.processesCompleted] + s[.processesExited] == 2 + s[.forks], "\(run.summary)")
        switch name {
        case "idle":
            #expect(s[.faults] == 0)
            #expect(s[.pagesCopiedInBackground] == s[.pagesExpected])
        default:
            break
        }
    }

    /// The fork-vs-copy race must really be exercised: copies refused (EAGAIN) while a fork event was unread, then
    /// retried after reading it — and every byte still right. Whether one run hits the window depends on timing (on
    /// a loaded machine the fill can finish before the storm), so up to five runs with a slowed fill may try; at
    /// least one must hit it, and every run must verify.
    @Test(.timeLimit(.minutes(2))) func forkStormHitsTheEagainPath() throws {
        var configuration = EngineConfiguration()
        configuration.fillChunkPages = 4
        configuration.fillChunkMaxPages = 4  // fixed small chunks: a growing chunk can bring every page home first
        var retries = 0
        for seed in 1...5 {
            let run = try RestoreRun.run(images: Self.images, scenario: "fork-storm", seed: UInt64(seed),
                                         configuration: configuration)
            #expect(run.outcome == .completed, "\(run.summary)")
            #expect(run.report.allPassed, "\(run.summary)")
            retries += run.statistics[.eagainRetries]
            if retries > 0 { break }
        }
        #expect(retries > 0, "five fork storms never hit EAGAIN")
    }

    /// Without the background fill the pages stay pending while the workloads change their maps, so every event
    /// kind is certain to reach the engine (with the fill on, a small image may be home before the event).
    @Test(.timeLimit(.minutes(1)), arguments: [
        ("mremap-move", RestoreStatistics.Counter.remaps), ("mremap-grow", .remaps), ("mremap-swap", .remaps),
        ("mremap-shrink", .unmaps), ("munmap-partial", .unmaps), ("madvise", .removes), ("exit-mid", .processesExited),
    ])
    func eventsFollowedWithoutBackgroundFill(_ scenario: String, _ counter: RestoreStatistics.Counter) throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        configuration.livenessProbeMilliseconds = 50
        let run = try RestoreRun.run(images: Self.images, scenario: scenario, configuration: configuration)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[counter] > 0, "\(counter) never happened: \(run.summary)")
    }

    @Test(.timeLimit(.minutes(1))) func demandFaultsOnlyServeEveryTouchedPage() throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        configuration.faultAroundPages = 1
        // With no background fill the daemon only ends once every page was faulted in: `verify` touches them all.
        let run = try RestoreRun.run(images: Self.images, scenario: "verify", configuration: configuration)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.pagesCopiedInBackground] == 0)
        #expect(run.statistics[.pagesCopiedOnFault] == run.statistics[.pagesExpected])
    }

    @Test(.timeLimit(.minutes(1))) func zombieIsAnnouncedWithoutADescriptor() throws {
        let run = try RestoreRun.run(images: Self.images, scenario: "verify", zombies: [101])
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.tasksAnnounced] == 2)
        #expect(run.statistics[.processesCompleted] == 1)
    }

    @Test(.timeLimit(.minutes(1))) func restorerHangingUpBeforeRSTFFailsTheRestore() throws {
        let run = try RestoreRun.run(images: Self.images, scenario: "exit-mid", hangUpBeforeRSTF: true)
        guard case .failed(let reason) = run.outcome else {
            Issue.record("expected a failed restore: \(run.summary)")
            return
        }
        #expect(reason.contains("before sending RSTF"), "\(reason)")
    }
}

/// The real CRIU 4.2 dump: both processes served and verified by lp-workload byte for byte.
@Suite(.serialized) struct FixtureRestoreTests {
    @Test(.timeLimit(.minutes(1)), arguments: ["verify", "fork-storm", "madvise"])
    func criuTreeproc(_ scenario: String) throws {
        let run = try RestoreRun.run(images: SharedFixtures.criuTreeproc, scenario: scenario)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.report.tasks.map(\.virtualPid).sorted() == [13288, 13290])
        #expect(run.statistics[.pagesExpected] == 2 * 1099)
    }

    /// What the workload checks against, checked against the README: A is pattern 42 (the child's first 16 pages
    /// pattern 7, so parent and child really get different bytes), B holds pattern 43 on every fourth page only.
    @Test func fixtureImagesHoldWhatTheReadmeSays() throws {
        let images = try ImageSet(directory: SharedFixtures.criuTreeproc)
        let a: UInt64 = 0x7f8b_b260_0000, b: UInt64 = 0x7f8b_b2af_d000
        for (pid, childPages) in [(Int32(13288), 0..<0), (13290, 0..<16)] {
            let process = try images.process(pid: pid)
            for p in [0, 5, 15, 16, 1023] {
                let bytes = try pageBytes(process, a + UInt64(p * basePageSize))
                let seed: UInt64 = childPages.contains(p) ? 7 : 42
                #expect(bytes.withUnsafeBytes { PagePattern.matches(seed: seed, pageIndex: UInt64(p), $0) })
            }
            #expect(try pageBytes(process, b).withUnsafeBytes { PagePattern.matches(seed: 43, pageIndex: 0, $0) })
            #expect(process.lazyRun(containing: b + UInt64(basePageSize)) == nil, "B's page 1 was never touched")
        }
    }

    private func pageBytes(_ process: ProcessImage, _ address: UInt64) throws -> [UInt8] {
        let run = try #require(process.lazyRun(containing: address))
        guard case .file(let path, let offset) = run.data else { throw LazyPagesTestError("no local data") }
        let handle = try #require(FileHandle(forReadingAtPath: path))
        try handle.seek(toOffset: offset + (address - run.address))
        return Array(try #require(try handle.read(upToCount: basePageSize)))
    }
}

struct LazyPagesTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The reliability scenarios (lp-workload's reliability_scenarios.c), each a real restore verifying every byte.
@Suite(.serialized) struct ReliabilityScenarioTests {
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ScenarioImages.write(to: directory)
        return directory
    }()
    static let manyVMAs: String = {
        let directory = try! makeTemporaryDirectory()
        try! ImageLayout.manyVMAs.write(to: directory, tasks: 1, vmaCount: 5000)
        return directory
    }()
    static let sparse: String = {
        let directory = try! makeTemporaryDirectory()
        try! ImageLayout.sparse.write(to: directory, tasks: 1, bytesPerTask: 1 << 30)
        return directory
    }()

    @Test(.timeLimit(.minutes(1)), arguments: [
        "threads16", "uffd-events", "fork2-storm", "fork-exit-early", "lazy-thp", "kernel-faults", "many-vmas",
        "sparse-huge",
    ])
    func scenario(_ name: String) throws {
        let run = try RestoreRun.run(images: Self.images, scenario: name, seed: 11)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        let s = run.statistics
        #expect(s[.processesCompleted] + s[.processesExited] == 2 + s[.forks], "\(run.summary)")
        #expect(s[.pagesDropped] == 0, "\(run.summary)")
    }

    /// Without the background fill every process keeps pages pending while it forks and remaps, so every event
    /// reaches the engine (with the fill on, a small image may be home before the events).
    @Test(.timeLimit(.minutes(1)), arguments: [("uffd-events", 2), ("fork2-storm", 2 * 40), ("fork-exit-early", 2 * 64)])
    func eventsSeenWithoutBackgroundFill(_ name: String, _ minimumForks: Int) throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        configuration.livenessProbeMilliseconds = 50
        let run = try RestoreRun.run(images: Self.images, scenario: name, seed: 3, configuration: configuration)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        let s = run.statistics
        #expect(s[.forks] >= minimumForks, "\(run.summary)")
        if name == "uffd-events" { #expect(s[.remaps] > 0 && s[.removes] > 0, "\(run.summary)") }
    }

    /// Kernel-side faults must be taken on pages that are really missing: without the background fill they are.
    @Test(.timeLimit(.minutes(1))) func kernelFaultsOnMissingPages() throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        configuration.livenessProbeMilliseconds = 50
        let run = try RestoreRun.run(images: Self.images, scenario: "kernel-faults", configuration: configuration)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        for task in run.report.tasks {
            #expect(task.output.contains { $0.contains("missing_before=4") }, "\(task.output)")
        }
    }

    /// MADV_HUGEPAGE splits the VMA: copies spanning the split are refused (ENOENT) and must be retried smaller,
    /// never dropped (dropping them handed out zero pages before the engine fix).
    @Test(.timeLimit(.minutes(1))) func hugePageAdviceSplitDoesNotDropPages() throws {
        let run = try RestoreRun.run(images: SharedFixtures.criuTreeproc, scenario: "lazy-thp")
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.pagesDropped] == 0, "\(run.summary)")
    }

    @Test(.timeLimit(.minutes(1)), arguments: ["many-vmas", "verify", "fork-storm"])
    func fiveThousandVMAs(_ scenario: String) throws {
        let run = try RestoreRun.run(images: Self.manyVMAs, scenario: scenario)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.pagesDropped] == 0, "\(run.summary)")
    }

    @Test(.timeLimit(.minutes(1))) func oneGiBSparseVMA() throws {
        let run = try RestoreRun.run(images: Self.sparse, scenario: "sparse-huge")
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        let line = run.report.tasks.first?.output.first { $0.hasPrefix("OK") } ?? ""
        #expect(line.contains("of=262144"), "\(line)")
        #expect(run.statistics[.pagesExpected] > 300, "\(run.summary)")
    }

    /// Fork children exiting before their fork event is read, under a fault-only daemon (no fill to notice them).
    @Test(.timeLimit(.minutes(1))) func childrenExitingBeforeTheirForkEventIsRead() throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        configuration.livenessProbeMilliseconds = 50
        let run = try RestoreRun.run(images: Self.images, scenario: "fork-exit-early", configuration: configuration)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.processesExited] > 0, "\(run.summary)")
    }

    @Test(.timeLimit(.minutes(1))) func zombieBesideAForkStorm() throws {
        let run = try RestoreRun.run(images: Self.images, scenario: "fork2-storm", zombies: [100])
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.tasksAnnounced] == 2)
    }
}

/// One restore may not track more processes (uffds) than its bound: past it the restore fails naming the bound,
/// and no process gets a wrong page.
@Suite struct TrackedProcessLimitTests {
    @Test(.timeLimit(.minutes(1))) func forksPastTheBoundFailTheRestoreClearly() throws {
        var configuration = EngineConfiguration()
        configuration.maxTrackedProcesses = 3  // two tasks and one forked child
        // Fault-only: with the fill on, a loaded machine can complete (and retire) a task before the other forks,
        // and the bound is never reached.
        configuration.backgroundFill = false
        let run = try RestoreRun.run(images: RestoreScenarioTests.images, scenario: "fork-storm",
                                     configuration: configuration, killTasksOnFailure: true)
        guard case .failed(let reason) = run.outcome else {
            Issue.record("expected a failed restore: \(run.summary)")
            return
        }
        #expect(reason.contains("maxTrackedProcesses"), "\(reason)")
        // Killed (as criu restore does on failure), never a FAIL line: no wrong page was handed out.
        for line in run.report.tasks.flatMap(\.output) { #expect(!line.hasPrefix("FAIL"), "\(line)") }
    }
}
