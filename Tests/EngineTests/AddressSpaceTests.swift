import LinuxSupport
import Testing
@testable import LazyPagesEngine

/// Bookkeeping of what each process still needs. Pure data structure: no kernel involved.
@Suite struct AddressSpaceTests {
    let base: UInt64 = 0x7f00_0000_0000
    let page = UInt64(basePageSize)

    func space(_ runs: [(UInt64, Int)]) -> AddressSpace {
        AddressSpace(extents: runs.map { LazyExtent(start: $0.0, dumpAddress: $0.0, data: nil, pageCount: $0.1) })
    }

    @Test func bitmapRunsAndSlices() {
        var bitmap = PageBitmap(count: 200, filled: true)
        #expect(bitmap.setCount == 200)
        #expect(bitmap.clear(10, 5) == 5)
        #expect(bitmap.clear(12, 10) == 7)
        #expect(bitmap.setCount == 188)
        #expect(bitmap.runLength(from: 0, limit: 100) == 10)
        #expect(bitmap.nextSet(from: 10) == 22)
        #expect(bitmap.runLength(from: 22, limit: 1000) == 178)
        // "The whole run" (Int.max) from a page past the first: used to overflow (found by the page-server fuzzer,
        // through the engine poisoning what a lying server left pending).
        #expect(bitmap.runLength(from: 22, limit: Int.max) == 178)
        var partly = space([(base, 8)])
        _ = partly.markDelivered(base, pages: 3)
        #expect(partly.nextPendingRun(from: 0, maxPages: Int.max)?.pageCount == 5)
        let slice = bitmap.slice(5, 130)
        #expect(slice.count == 130)
        #expect(slice.setCount == 130 - 12)
        for i in 0..<130 { #expect(slice.isSet(i) == bitmap.isSet(i + 5)) }
        #expect(bitmap.nextSet(from: 200) == nil)
    }

    @Test func lookupAndFaultAround() throws {
        var s = space([(base, 8), (base + 16 * page, 4)])
        #expect(s.pendingPages == 12)
        let run = try #require(s.pendingRun(at: base + 2 * page + 123, maxPages: 16))
        #expect(run.address == base + 2 * page)
        #expect(run.pageCount == 6)
        #expect(s.pendingRun(at: base + 9 * page, maxPages: 16) == nil)
        #expect(s.markDelivered(base + 4 * page, pages: 2) == 2)
        #expect(s.pendingRun(at: base + 2 * page, maxPages: 16)?.pageCount == 2)
        #expect(s.pendingRun(at: base + 4 * page, maxPages: 16) == nil)
        #expect(s.pendingPages == 10)
    }

    @Test func nextPendingRunWrapsAround() throws {
        var s = space([(base, 4), (base + 10 * page, 4)])
        s.markDelivered(base, pages: 2)
        let first = try #require(s.nextPendingRun(from: base + 11 * page, maxPages: 64))
        #expect(first.address == base + 11 * page && first.pageCount == 3)
        s.markDelivered(base + 10 * page, pages: 4)
        let wrapped = try #require(s.nextPendingRun(from: base + 11 * page, maxPages: 64))
        #expect(wrapped.address == base + 2 * page && wrapped.pageCount == 2)
    }

    @Test func removeAndUnmapForgetImageData() {
        var s = space([(base, 16)])
        s.remove(base + 2 * page, base + 4 * page)
        #expect(s.pendingRun(at: base + 3 * page, maxPages: 1) == nil)
        #expect(s.pendingPages == 14)
        s.unmap(base + 10 * page, base + 20 * page)
        #expect(s.pendingPages == 8)
        #expect(s.extents.count == 2)
    }

    @Test func remapMovesPendingPagesAndKeepsDumpAddresses() throws {
        var s = space([(base, 16)])
        s.markDelivered(base + 5 * page, pages: 1)
        let target = base + 100 * page
        s.remap(from: base + 4 * page, to: target, length: 4 * page)
        #expect(s.pendingPages == 15)
        #expect(s.pendingRun(at: base + 4 * page, maxPages: 1) == nil)
        let moved = try #require(s.pendingRun(at: target, maxPages: 16))
        #expect(moved.pageCount == 1)
        #expect(moved.dumpAddress == base + 4 * page)
        #expect(s.pendingRun(at: target + page, maxPages: 16) == nil)  // delivered before the move
        let tail = try #require(s.pendingRun(at: target + 2 * page, maxPages: 16))
        #expect(tail.pageCount == 2 && tail.dumpAddress == base + 6 * page)
    }

    @Test func extentsOverlappingADumpRange() {
        // Unmoved: exactly the extents whose (runtime = dump) range overlaps, found without a scan.
        var s = space([(base, 4), (base + 8 * page, 1), (base + 10 * page, 1), (base + 20 * page, 4)])
        #expect(!s.hasMovedExtents)
        #expect(s.extents(overlappingDump: base + 9 * page, base + 11 * page) == 2..<3)
        #expect(s.extents(overlappingDump: base + 3 * page, base + 21 * page) == 0..<4)
        #expect(s.extents(overlappingDump: base + 4 * page, base + 8 * page).isEmpty)
        // Moved: dump and runtime addresses differ, so every extent is a candidate.
        s.remap(from: base + 8 * page, to: base + 50 * page, length: page)
        #expect(s.hasMovedExtents)
        #expect(s.extents(overlappingDump: base + 8 * page, base + 9 * page) == 0..<4)
    }

    @Test func remapSwapThroughAThirdPlace() throws {
        // Three mremap(MREMAP_FIXED) calls swap A and B via a scratch address C.
        let a = base, b = base + 64 * page, c = base + 128 * page
        var s = space([(a, 8), (b, 8)])
        s.markDelivered(b, pages: 1)
        s.remap(from: a, to: c, length: 8 * page)
        s.remap(from: b, to: a, length: 8 * page)
        s.remap(from: c, to: b, length: 8 * page)
        #expect(s.pendingPages == 15)
        #expect(s.pendingRun(at: a, maxPages: 16) == nil)
        #expect(try #require(s.pendingRun(at: a + page, maxPages: 16)).dumpAddress == b + page)
        #expect(try #require(s.pendingRun(at: b, maxPages: 16)).dumpAddress == a)
    }

    @Test func forkCopiesAreIndependent() {
        let parent = space([(base, 64)])
        var child = parent
        child.markDelivered(base, pages: 64)
        #expect(parent.pendingPages == 64)
        #expect(child.isComplete)
    }
}
