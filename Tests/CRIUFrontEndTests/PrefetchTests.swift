import Foundation
import LinuxSupport
import TestSupport
import Testing
import Userfaultfd
@testable import LazyPagesEngine

/// Working-set prefetch: a restore records the order of its faults; a later restore of the same images delivers
/// those pages first, so the workload faults far less — and still reads every byte right.
@Suite(.serialized) struct PrefetchTests {
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ScenarioImages.write(to: directory)
        return directory
    }()

    /// Background fill off: without a profile every page the workload touches is a fault; with the profile of the
    /// same workload those pages are copied ahead of it. (The second workload waits until the daemon is done before
    /// it checks its pages — `idle` — so that the count cannot depend on which of the two gets the CPU first.)
    @Test(.timeLimit(.minutes(2))) func profileCutsFaultsAndEveryByteVerifies() throws {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        let first = try RestoreRun.run(images: Self.images, scenario: "verify", seed: 11,
                                       configuration: configuration, recordProfile: true)
        #expect(first.outcome == .completed, "\(first.summary)")
        #expect(first.report.allPassed, "\(first.summary)")
        let profile = try #require(first.profile)
        let faults = first.statistics[.faults]
        #expect(faults > 100, "\(first.summary)")
        #expect(!profile.entries.isEmpty && profile.entries.count <= faults)
        #expect(Set(profile.entries.map(\.imagePid)) == [100, 101])

        // The file format round-trips.
        #expect(try WorkingSetProfile(parsing: profile.text) == profile)

        let second = try RestoreRun.run(images: Self.images, scenario: "idle", seed: 11,
                                        configuration: configuration, prefetch: profile)
        #expect(second.outcome == .completed, "\(second.summary)")
        #expect(second.report.allPassed, "\(second.summary)")
        let s = second.statistics
        print("prefetch: faults without a profile \(faults), with \(s[.faults]) "
              + "(\(s[.pagesPrefetched]) pages prefetched, \(profile.entries.count) profiled)")
        #expect(s[.pagesPrefetched] > 0, "\(second.summary)")
        #expect(s[.faults] * 2 < faults, "faults without a profile: \(faults); with: \(s[.faults])\n\(second.summary)")
    }

    /// Entries that do not match the image (unknown pid, addresses outside every range, duplicates) are skipped;
    /// the restore, with the fill on, is unaffected.
    @Test(.timeLimit(.minutes(1))) func staleEntriesAreSkipped() throws {
        let base = ScenarioImages.base
        let page = ScenarioImages.page
        let profile = WorkingSetProfile(entries: [
            .init(imagePid: 100, dumpAddress: base + 3 * page),
            .init(imagePid: 100, dumpAddress: base + 4 * page),
            .init(imagePid: 100, dumpAddress: 0x1000),  // in no range
            .init(imagePid: 100, dumpAddress: base + 205 * page),  // eager: not lazy, never pending
            .init(imagePid: 999, dumpAddress: base),  // no such task
            .init(imagePid: 101, dumpAddress: base + 0x100_0000),
            .init(imagePid: 100, dumpAddress: base + 3 * page),  // duplicate
        ])
        #expect(profile.entries.count == 6)
        let run = try RestoreRun.run(images: Self.images, scenario: "verify", seed: 3, prefetch: profile)
        #expect(run.outcome == .completed, "\(run.summary)")
        #expect(run.report.allPassed, "\(run.summary)")
        #expect(run.statistics[.prefetchSkipped] + run.statistics[.pagesPrefetched] >= 3, "\(run.summary)")
        #expect(run.statistics.pagesCopied + run.statistics[.pagesDropped] == run.statistics[.pagesExpected],
                "\(run.summary)")
    }

    /// CRIU hands over a task's uffd before its restorer registers the lazy ranges: a prefetch copy then fails
    /// (ENOENT) without effect. The prefetch waits for RSTF and resumes at the same entry, delivering the right bytes.
    @Test(.timeLimit(.minutes(1))) func prefetchBeforeRegistrationWaitsForRSTF() throws {
        let pages = 16
        let length = pages * basePageSize
        let region = try #require(mmapAnonymous(length))
        let source = try #require(mmapAnonymous(length))
        defer {
            munmap(region, length)
            munmap(source, length)
        }
        for p in 0..<pages { memset(source + p * basePageSize, Int32(p + 1), basePageSize) }
        let address = UInt64(UInt(bitPattern: region))
        let uffd = try Userfaultfd.open(required: Features.nonCooperativeEvents)
        defer { uffd.close() }
        let engine = try RestoreEngine(logger: testLogger())
        let wanted = [5, 3, 4, 9]
        engine.prefetch(WorkingSetProfile(entries: wanted.map {
            .init(imagePid: 7, dumpAddress: address + UInt64($0 * basePageSize))
        }))
        let space = AddressSpace(extents: [
            LazyExtent(start: address, dumpAddress: address, data: source, pageCount: pages),
        ])
        try engine.addTask(imagePid: 7, uffd: uffd, space: space)
        let process = try #require(engine.processes.values.first)

        engine.prefetchOneChunk()  // not registered yet: held, nothing delivered
        #expect(process.prefetchHeld)
        #expect(process.prefetchCursor == 0)
        #expect(engine.statistics[.pagesPrefetched] == 0)
        #expect(process.space.pendingPages == pages)

        try uffd.register(AddressRange(start: address, length: UInt64(length)))
        engine.allTasksAnnounced()
        engine.prefetchOneChunk()
        #expect(engine.statistics[.pagesPrefetched] == wanted.count)
        #expect(process.space.pendingPages == pages - wanted.count)
        // Only the delivered pages are read (any other would fault with nobody serving it).
        for p in wanted {
            let bytes = UnsafeRawBufferPointer(start: region + p * basePageSize, count: basePageSize)
            #expect(bytes.allSatisfy { $0 == UInt8(p + 1) }, "page \(p)")
        }
        engine.closeAll()
    }

    @Test func malformedProfilesAreRefusedNamingTheLine() {
        func error(_ text: String) -> String {
            do {
                _ = try WorkingSetProfile(parsing: text)
                return "parsed"
            } catch { return error.description }
        }
        #expect(error("").contains("first line"))
        #expect(error("lazy-pages-profile 2\n").contains("first line"))
        #expect(error("lazy-pages-profile 1\n100 0x1000\n100 4096\n").contains("line 3"))
        #expect(error("lazy-pages-profile 1\n-5 0x1000\n").contains("line 2"))
        #expect(error("lazy-pages-profile 1\n100 0x1001\n").contains("not page aligned"))
        #expect(error("lazy-pages-profile 1\n100 0x1000 7\n").contains("line 2"))
        #expect(error("lazy-pages-profile 1\n100 0x1000\n\n").contains("line 3"))
        #expect(error("lazy-pages-profile 1\n100 0x1000\n101 0x2000\n") == "parsed")
    }
}
