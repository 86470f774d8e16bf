import Foundation
import TestSupport
import Testing

@testable import CRIUImages

/// Reading must never touch page data and must stay fast on big layouts.
@Suite struct ScaleTests {
    /// A 16 GiB sparse pages file: only its size is looked at.
    @Test func sixteenGiBSparsePagesFile() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x1000_0000_0000
        let pages = 4 * 1024 * 1024  // 16 GiB
        // Written LAZY-only (no data), then flipped to LAZY|PRESENT and given a sparse 16 GiB pages file.
        try ImageWriter.write(
            directory: temp.path,
            processes: [ProcessSpec(pid: 1, ppid: 0, vmas: [vma(a, pages: UInt64(pages))], runs: [run(a, pages, .lazy)])])
        try editPagemapEntries(temp.sub("pagemap-1.img")) { entries in entries[0].flags = lazyPresent.rawValue }
        try truncateFile(temp.sub("pages-1.img"), to: UInt64(pages) * pageSize)

        let clock = ContinuousClock()
        let start = clock.now
        let process = try ImageSet(directory: temp.path).process(pid: 1)
        let elapsed = clock.now - start
        #expect(process.lazyRuns == [LazyRun(address: a, pageCount: pages, data: .file(path: temp.sub("pages-1.img"), offset: 0))])
        #expect(elapsed < .seconds(1), "took \(elapsed)")

        try truncateFile(temp.sub("pages-1.img"), to: UInt64(pages - 1) * pageSize)
        expectImageError(file: temp.sub("pages-1.img"), "needs 17179869184 bytes") {
            _ = try ImageSet(directory: temp.path).process(pid: 1)
        }
    }

    /// 50 000 VMAs, 25 000 entries each spanning two adjacent VMAs (so 50 000 lazy runs).
    @Test func fiftyThousandVMAs() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x2000_0000_0000
        var vmas: [VMA] = []
        var runs: [RunSpec] = []
        for pair in 0 ..< UInt64(25_000) {
            let base = a + pair * 8 * pageSize  // two 2-page VMAs, then a 4-page gap
            vmas.append(vma(base, pages: 2))
            vmas.append(vma(base + 2 * pageSize, pages: 2))
            runs.append(run(base + pageSize, 2, pair % 100 == 0 ? lazyPresent : .lazy, seed: pair))
        }
        try ImageWriter.write(directory: temp.path, processes: [ProcessSpec(pid: 7, ppid: 0, vmas: vmas, runs: runs)])

        let clock = ContinuousClock()
        let start = clock.now
        let process = try ImageSet(directory: temp.path).process(pid: 7)
        let elapsed = clock.now - start
        #expect(process.vmas.count == 50_000)
        #expect(process.entries.count == 25_000)
        #expect(process.lazyRuns.count == 50_000)
        #expect(process.lazyRuns.allSatisfy { $0.pageCount == 1 })
        // A safety net against a quadratic walk (50 000² steps take minutes), not a speed goal: those live in the bench.
        #expect(elapsed < .seconds(30), "took \(elapsed)")

        // Entry 100 is the second present one: its second page is the 4th page of the file.
        let run = try #require(process.lazyRun(containing: a + 100 * 8 * pageSize + 2 * pageSize))
        #expect(run.data == .file(path: temp.sub("pages-1.img"), offset: 3 * pageSize))
        let page = try #require(try lazyPage(process, at: run.address))
        let matches = pageMatches(page, seed: 100, p: 1)
        #expect(matches)
    }

    /// The writer streams: 64 MiB of patterned pages, the file exactly that size and correct at both ends.
    @Test func writerStreamsPageData() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x3000_0000_0000
        let pages = 16 * 1024
        try ImageWriter.write(
            directory: temp.path,
            processes: [ProcessSpec(pid: 2, ppid: 0, vmas: [vma(a, pages: UInt64(pages))], runs: [run(a, pages, lazyPresent, seed: 11)])])
        let process = try ImageSet(directory: temp.path).process(pid: 2)
        #expect(try FileManager.default.attributesOfItem(atPath: temp.sub("pages-1.img"))[.size] as? UInt64
            == UInt64(pages) * pageSize)
        for p in [UInt64(0), 255, 256, UInt64(pages - 1)] {
            let page = try #require(try lazyPage(process, at: a + p * pageSize))
            let matches = pageMatches(page, seed: 11, p: p)
            #expect(matches, "page \(p)")
        }
    }
}
