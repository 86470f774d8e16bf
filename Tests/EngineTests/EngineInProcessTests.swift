import Foundation
import LinuxSupport
import Logging
import TestSupport
import Testing
import Userfaultfd
@testable import LazyPagesEngine

/// The engine serving a uffd whose registered memory is this test process's own: threads of the test fault, the
/// engine (on its own thread) serves them and fills the rest. Real kernel, real faults; the multi-process scenarios
/// (fork, mremap in a restored task) live in the restore tests.
@Suite(.serialized) struct EngineInProcessTests {
    /// An anonymous mapping registered MISSING with a fresh uffd, plus a source buffer with known bytes.
    final class Fixture {
        let pages: Int
        let region: UnsafeMutableRawPointer
        let source: UnsafeMutableRawPointer
        let uffd: Userfaultfd

        init(pages: Int, registered: Bool = true) throws {
            self.pages = pages
            let length = pages * basePageSize
            region = try #require(mmapAnonymous(length))
            source = try #require(mmapAnonymous(length))
            for p in 0..<pages {
                let words = (source + p * basePageSize).assumingMemoryBound(to: UInt64.self)
                for w in 0..<(basePageSize / 8) { words[w] = UInt64(p + 1) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(w) }
            }
            uffd = try Userfaultfd.open(required: Features.nonCooperativeEvents)
            if registered { try register() }
        }

        /// Registers the region MISSING (done by `init` unless `registered: false`, as CRIU's restorer does after
        /// it has sent the uffd).
        func register() throws {
            _ = try uffd.register(AddressRange(start: address, length: UInt64(pages * basePageSize)))
        }

        var address: UInt64 { UInt64(UInt(bitPattern: region)) }

        func space(skipping skipped: Range<Int> = 0..<0) -> AddressSpace {
            var extents: [LazyExtent] = []
            if skipped.lowerBound > 0 {
                extents.append(LazyExtent(start: address, dumpAddress: address, data: source, pageCount: skipped.lowerBound))
            }
            if skipped.upperBound < pages {
                let offset = skipped.upperBound * basePageSize
                extents.append(LazyExtent(start: address + UInt64(offset), dumpAddress: address + UInt64(offset),
                                          data: source + offset, pageCount: pages - skipped.upperBound))
            }
            return AddressSpace(extents: extents)
        }

        deinit {
            // Close the uffd first: with UNMAP events negotiated, munmap of a region still registered with an open
            // uffd blocks until someone reads the event — and after a cancelled engine nobody does (a hang).
            uffd.close()
            munmap(region, pages * basePageSize)
            munmap(source, pages * basePageSize)
        }
    }

    /// Runs `engine` on a dedicated thread; the returned closure waits for its outcome.
    static func start(_ engine: RestoreEngine) -> () -> RestoreOutcome { onThread { engine.run() } }

    @Test(.timeLimit(.minutes(1))) func faultsThenBackgroundFillDeliverEveryByte() throws {
        let fixture = try Fixture(pages: 512)
        var configuration = EngineConfiguration()
        configuration.fillChunkPages = 16
        configuration.fillBeforeAllTasksAnnounced = false  // --no-early-fill: faults only until RSTF
        let engine = try RestoreEngine(configuration: configuration, logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space(skipping: 100..<110))
        let wait = Self.start(engine)
        // Faults before "RSTF": served from the first fd on, no background fill yet.
        for p in stride(from: 3, to: 512, by: 37) {
            let got = (fixture.region + p * basePageSize).load(as: UInt64.self)
            #expect(got == (fixture.source + p * basePageSize).load(as: UInt64.self) || (100..<110).contains(p))
        }
        #expect(engine.statistics[.faults] > 0)
        #expect(engine.statistics[.pagesCopiedInBackground] == 0)
        engine.execute { $0.allTasksAnnounced() }
        #expect(wait() == .completed)
        #expect(engine.statistics[.pagesCopiedInBackground] > 0)
        // Every page home: the image pages match byte for byte, the skipped ones read zero (kernel zero-fill
        // after the engine closed the uffd).
        for p in 0..<512 {
            let page = UnsafeRawBufferPointer(start: fixture.region + p * basePageSize, count: basePageSize)
            if (100..<110).contains(p) {
                #expect(page.allSatisfy { $0 == 0 }, "page \(p) should read zeros")
            } else {
                #expect(memcmp(page.baseAddress!, fixture.source + p * basePageSize, basePageSize) == 0, "page \(p) differs")
            }
        }
    }

    @Test("an idle process is filled in copies that double up to fillChunkMaxPages", .timeLimit(.minutes(1)))
    func idleFillGrowsItsCopies() throws {
        let fixture = try Fixture(pages: 2048)
        var configuration = EngineConfiguration()
        configuration.fillChunkPages = 64
        configuration.fillChunkMaxPages = 1024
        let engine = try RestoreEngine(configuration: configuration, logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space())
        let wait = Self.start(engine)
        engine.execute { $0.allTasksAnnounced() }
        #expect(wait() == .completed)
        // 64 + 128 + 256 + 512 + 1024 + the last 64: six copies (fixed 64-page chunks would take 32).
        #expect(engine.statistics[.copiesDone] == 6)
        #expect(engine.statistics[.pagesCopiedInBackground] == 2048)
        for p in 0..<2048 {
            #expect(memcmp(fixture.region + p * basePageSize, fixture.source + p * basePageSize, basePageSize) == 0,
                    "page \(p) differs")
        }
    }

    @Test("the fill's copy size doubles while no fault is served and drops back on a fault")
    func fillChunkResetsOnAFault() throws {
        var configuration = EngineConfiguration()
        configuration.fillChunkPages = 16
        configuration.fillChunkMaxPages = 100
        let engine = try RestoreEngine(configuration: configuration, logger: testLogger())
        // Not running: called on this thread, as the loop would.
        #expect((0..<5).map { _ in engine.nextChunkPages() } == [16, 32, 64, 100, 100])
        engine.faultClock &+= 1  // a fault was served
        #expect((0..<3).map { _ in engine.nextChunkPages() } == [16, 32, 64])
        configuration.fillChunkMaxPages = 16
        let fixed = try RestoreEngine(configuration: configuration, logger: testLogger())
        #expect((0..<3).map { _ in fixed.nextChunkPages() } == [16, 16, 16])
    }

    /// Reads `value` on the loop thread until `done` says yes, or 30 s (a safety net) have passed; returns the last.
    static func waitOnLoop<T>(_ engine: RestoreEngine, until done: (T) -> Bool, _ value: @escaping @Sendable (RestoreEngine) -> T)
        -> T
    {
        let deadline = Date().addingTimeInterval(30)
        while true {
            let read = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var seen: T?
            engine.execute { engine in
                seen = value(engine)
                read.signal()
            }
            read.wait()
            if done(seen!) || Date() > deadline { return seen! }
        }
    }

    @Test("the fill starts before every task is announced (before RSTF) and delivers every byte", .timeLimit(.minutes(1)))
    func fillStartsBeforeRSTF() throws {
        let fixture = try Fixture(pages: 1024)
        let engine = try RestoreEngine(configuration: EngineConfiguration(), logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space())
        let wait = Self.start(engine)
        let filled = Self.waitOnLoop(engine, until: { $0 == 1024 }) { $0.statistics[.pagesCopiedInBackground] }
        #expect(filled == 1024)
        for p in 0..<1024 {
            #expect(memcmp(fixture.region + p * basePageSize, fixture.source + p * basePageSize, basePageSize) == 0,
                    "page \(p) differs")
        }
        engine.execute { $0.allTasksAnnounced() }
        #expect(wait() == .completed)
        #expect(engine.statistics[.faults] == 0)
    }

    @Test("an early fill that meets a range not registered yet waits for RSTF and drops nothing",
          .timeLimit(.minutes(1)))
    func earlyFillWaitsForRegistration() throws {
        let fixture = try Fixture(pages: 256, registered: false)
        let engine = try RestoreEngine(configuration: EngineConfiguration(), logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space())
        let wait = Self.start(engine)
        let held = Self.waitOnLoop(engine, until: { $0 }) { $0.processes.values.first?.fillHeld ?? false }
        #expect(held)
        let pending = Self.waitOnLoop(engine, until: { _ in true }) { $0.processes.values.first?.space.pendingPages ?? -1 }
        #expect(pending == 256)
        #expect(engine.statistics[.pagesDropped] == 0)
        try fixture.register()  // as the restorer does before RSTF
        engine.execute { $0.allTasksAnnounced() }
        #expect(wait() == .completed)
        #expect(engine.statistics[.pagesDropped] == 0)
        #expect(engine.statistics[.pagesCopiedInBackground] == 256)
        for p in 0..<256 {
            #expect(memcmp(fixture.region + p * basePageSize, fixture.source + p * basePageSize, basePageSize) == 0,
                    "page \(p) differs")
        }
    }

    /// The fill cursor (as a page index of the fixture) of the engine's only process, read on the loop thread.
    static func fillCursorPage(_ engine: RestoreEngine, _ fixture: Fixture) -> Int {
        let read = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var cursor: UInt64 = 0
        engine.execute { engine in
            cursor = engine.processes.values.first?.fillCursor ?? 0
            read.signal()
        }
        read.wait()
        return cursor < fixture.address ? -1 : Int((cursor - fixture.address) / UInt64(basePageSize))
    }

    @Test("a process reading forwards pulls the fill ahead of it; scattered faults leave the fill where it is",
          .timeLimit(.minutes(1)))
    func fillJumpsAheadOfAForwardReader() throws {
        let fixture = try Fixture(pages: 512)
        var configuration = EngineConfiguration()
        configuration.fillChunkPages = 16
        configuration.fillBeforeAllTasksAnnounced = false  // the cursor is read while only faults move it
        let engine = try RestoreEngine(configuration: configuration, logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space())
        let wait = Self.start(engine)
        func touch(_ p: Int) {
            #expect((fixture.region + p * basePageSize).load(as: UInt64.self)
                    == (fixture.source + p * basePageSize).load(as: UInt64.self), "page \(p)")
        }
        touch(300)  // a first fault alone is no direction
        #expect(Self.fillCursorPage(engine, fixture) == -1)
        touch(301)
        touch(302)
        #expect(Self.fillCursorPage(engine, fixture) == 303)
        touch(10)  // backwards: stays
        #expect(Self.fillCursorPage(engine, fixture) == 303)
        touch(400)  // 390 pages on from the last fault: a jump, not a scan
        #expect(Self.fillCursorPage(engine, fixture) == 303)
        touch(410)  // within one fill chunk (16 pages) after the last fault: reading forwards
        #expect(Self.fillCursorPage(engine, fixture) == 411)
        #expect(engine.statistics[.faults] == 6)
        engine.execute { $0.allTasksAnnounced() }
        #expect(wait() == .completed)
        for p in 0..<512 {
            #expect(memcmp(fixture.region + p * basePageSize, fixture.source + p * basePageSize, basePageSize) == 0, "page \(p) differs")
        }
    }

    @Test(.timeLimit(.minutes(1))) func removedRangeReadsZerosNeverImageData() throws {
        let fixture = try Fixture(pages: 64)
        var configuration = EngineConfiguration()
        configuration.backgroundFill = false
        let engine = try RestoreEngine(configuration: configuration, logger: testLogger())
        try engine.addTask(imagePid: 1, uffd: fixture.uffd, space: fixture.space())
        let wait = Self.start(engine)
        // Page 8 is delivered, then dropped; 9 was never touched. Both must read zeros after MADV_DONTNEED.
        #expect((fixture.region + 8 * basePageSize).load(as: UInt64.self) == fixture.source.load(fromByteOffset: 8 * basePageSize, as: UInt64.self))
        #expect(madvise(fixture.region + 8 * basePageSize, 2 * basePageSize, MADV_DONTNEED) == 0)
        #expect((fixture.region + 8 * basePageSize).load(as: UInt64.self) == 0)
        #expect((fixture.region + 9 * basePageSize).load(as: UInt64.self) == 0)
        #expect((fixture.region + 10 * basePageSize).load(as: UInt64.self) == fixture.source.load(fromByteOffset: 10 * basePageSize, as: UInt64.self))
        engine.cancel(reason: "test over")
        #expect(wait() == .cancelled(reason: "test over"))
        // (Counted after the loop ended: the engine counts a zero fill after the ioctl woke the reader.)
        #expect(engine.statistics[.removes] == 1)
        #expect(engine.statistics[.pagesZeroed] >= 2)
    }
}

