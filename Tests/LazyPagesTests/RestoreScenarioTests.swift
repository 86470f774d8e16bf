import CRIUImages
import Foundation
import LazyPagesEngine
import RestoreSimulator
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
        "munmap-partial", "threads", "exit-mid",
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
        case "fork-storm":
            #expect(s[.forks] > 0, "\(run.summary)")
            // The fork-vs-copy race must really be exercised: copies refused while a fork was unread.
            #expect(s[.eagainRetries] > 0, "the fork storm never hit EAGAIN: \(run.summary)")
        default:
            break
        }
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
        let run = try RestoreRun.run(images: Fixture.criuTreeproc, scenario: scenario)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.report.tasks.map(\.virtualPid).sorted() == [13288, 13290])
        #expect(run.statistics[.pagesExpected] == 2 * 1099)
    }

    /// What the workload checks against, checked against the README: A is pattern 42 (the child's first 16 pages
    /// pattern 7, so parent and child really get different bytes), B holds pattern 43 on every fourth page only.
    @Test func fixtureImagesHoldWhatTheReadmeSays() throws {
        let images = try ImageSet(directory: Fixture.criuTreeproc)
        let a: UInt64 = 0x7f8b_b260_0000, b: UInt64 = 0x7f8b_b2af_d000
        for (pid, childPages) in [(Int32(13288), 0..<0), (13290, 0..<16)] {
            let process = try images.process(pid: pid)
            for p in [0, 5, 15, 16, 1023] {
                let bytes = try pageBytes(process, a + UInt64(p * criuPageSize))
                let seed: UInt64 = childPages.contains(p) ? 7 : 42
                #expect(bytes.withUnsafeBytes { PagePattern.matches(seed: seed, pageIndex: UInt64(p), $0) })
            }
            #expect(try pageBytes(process, b).withUnsafeBytes { PagePattern.matches(seed: 43, pageIndex: 0, $0) })
            #expect(process.lazyRun(containing: b + UInt64(criuPageSize)) == nil, "B's page 1 was never touched")
        }
    }

    private func pageBytes(_ process: ProcessImage, _ address: UInt64) throws -> [UInt8] {
        let run = try #require(process.lazyRun(containing: address))
        guard case .file(let path, let offset) = run.data else { throw LazyPagesTestError("no local data") }
        let handle = try #require(FileHandle(forReadingAtPath: path))
        try handle.seek(toOffset: offset + (address - run.address))
        return Array(try #require(try handle.read(upToCount: criuPageSize)))
    }
}

struct LazyPagesTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
