import LinuxSupport
import Testing

@testable import CRIUImages

/// The real CRIU 4.2 dump of a two-process tree (see the fixture's README).
@Suite struct FixtureTests {
    let regionA: UInt64 = 0x7f8b_b260_0000
    let regionB: UInt64 = 0x7f8b_b2af_d000

    @Test func pstreeListsParentAndChild() throws {
        let set = try ImageSet(directory: fixtureDirectory)
        #expect(set.tasks.map(\.pid) == [13288, 13290])
        #expect(set.tasks[1].ppid == 13288)
        #expect(set.tasks.allSatisfy { $0.threads == [$0.pid] })
        #expect(set.imageVersion == 2)
    }

    @Test(arguments: [(Int32(13288), UInt32(1)), (Int32(13290), UInt32(2))])
    func pagemapShape(pid: Int32, pagesID: UInt32) throws {
        let process = try ImageSet(directory: fixtureDirectory).process(pid: pid)
        #expect(process.pagesID == pagesID)
        #expect(process.entries.count == 79)
        #expect(process.entries.reduce(0) { $0 + $1.pageCount } == 1114)
        let lazyPresent = process.entries.filter { $0.flags == [.lazy, .present] }
        #expect(lazyPresent.reduce(0) { $0 + $1.pageCount } == 1099)
        #expect(process.entries.map(\.pageCount).max() == 256)
        #expect(process.lazyPageCount == 1099)
        #expect(!process.vmas.isEmpty)

        // Every run sorted, inside exactly one VMA, backed by this set's pages file.
        for (previous, next) in zip(process.lazyRuns, process.lazyRuns.dropFirst()) {
            #expect(previous.end <= next.address)
        }
        for run in process.lazyRuns + process.eagerRuns {
            let vma = try #require(process.vma(containing: run.address))
            #expect(run.end <= vma.end)
            #expect(run.data == .file(path: "\(fixtureDirectory)/pages-\(pagesID).img", offset: offsetOf(run, in: process)))
        }
        #expect(process.eagerRuns.reduce(0) { $0 + $1.pageCount } == 1114 - 1099)
    }

    /// Offset the pagemap order implies for a run (computed independently of the reader's bookkeeping).
    private func offsetOf(_ run: LazyRun, in process: ProcessImage) -> UInt64 {
        var offset: UInt64 = 0
        for entry in process.entries {
            if run.address >= entry.vaddr && run.address < entry.end {
                return offset + (run.address - entry.vaddr)
            }
            if entry.flags.contains(.present) { offset += entry.pageCount * pageSize }
        }
        return .max
    }

    @Test(arguments: [Int32(13288), Int32(13290)])
    func regionAReadsBackThePattern(pid: Int32) throws {
        let process = try ImageSet(directory: fixtureDirectory).process(pid: pid)
        for p in UInt64(0) ..< 1024 {
            let page = try #require(try lazyPage(process, at: regionA + p * pageSize), "page \(p)")
            let seed: UInt64 = (pid == 13290 && p < 16) ? 7 : 42
            let matches = pageMatches(page, seed: seed, p: p)
            #expect(matches, "pid \(pid) region A page \(p)")
        }
    }

    @Test(arguments: [Int32(13288), Int32(13290)])
    func regionBHasOnlyEveryFourthPage(pid: Int32) throws {
        let process = try ImageSet(directory: fixtureDirectory).process(pid: pid)
        for p in UInt64(0) ..< 256 {
            let address = regionB + p * pageSize
            if p % 4 == 0 {
                let page = try #require(try lazyPage(process, at: address), "page \(p)")
                let matches = pageMatches(page, seed: 43, p: p)
                #expect(matches, "pid \(pid) region B page \(p)")
            } else {
                #expect(process.lazyRun(containing: address) == nil, "page \(p) should be in no run")
                #expect(!process.entries.contains { address >= $0.vaddr && address < $0.end })
            }
        }
    }

    @Test func pagePatternMatchesTheFixture() throws {
        let process = try ImageSet(directory: fixtureDirectory).process(pid: 13288)
        let page = try #require(try lazyPage(process, at: regionA + 5 * pageSize))
        var generated = [UInt8](repeating: 0, count: basePageSize)
        generated.withUnsafeMutableBytes { PagePattern.fill(seed: 42, pageIndex: 5, into: $0) }
        let same = page == generated
        #expect(same)
        #expect(page.withUnsafeBytes { PagePattern.matches(seed: 42, pageIndex: 5, $0) })
    }
}
