import Foundation
import LinuxSupport
import TestSupport
import Testing

@testable import CRIUImages

/// Images written by `ImageWriter` read back through `ImageSet` as written.
@Suite struct RoundTripTests {
    /// Two processes; a LAZY|PRESENT run spanning two adjacent VMAs, an eager run, a remote-only LAZY run.
    @Test func writeThenRead() throws {
        let temp = try TemporaryDirectory()
        let dir = temp.sub("set")
        let a: UInt64 = 0x7000_0000_0000
        let vmas = [vma(a, pages: 8), vma(a + 8 * pageSize, pages: 8), vma(a + 32 * pageSize, pages: 16)]
        try ImageWriter.write(
            directory: dir,
            processes: [
                ProcessSpec(
                    pid: 10, ppid: 0, vmas: vmas,
                    runs: [
                        run(a + 2 * pageSize, 2, .present, seed: 5),
                        run(a + 6 * pageSize, 6, lazyPresent, seed: 6),  // crosses into the second VMA
                        run(a + 32 * pageSize, 3, .lazy),  // remote only
                        run(a + 40 * pageSize, 1, lazyPresent, seed: 8),
                    ]),
                ProcessSpec(pid: 11, ppid: 10, vmas: [vma(a, pages: 4)], runs: [run(a, 4, lazyPresent, seed: 9)]),
            ])

        let set = try ImageSet(directory: dir + "/")
        #expect(set.directory == dir)
        #expect(set.tasks == [
            TaskEntry(pid: 10, ppid: 0, pgid: 10, sid: 10, threads: [10]),
            TaskEntry(pid: 11, ppid: 10, pgid: 10, sid: 10, threads: [11]),
        ])

        let p10 = try set.process(pid: 10)
        #expect(p10.pagesID == 1)
        #expect(p10.vmas == vmas)
        #expect(p10.entries == [
            PagemapEntry(vaddr: a + 2 * pageSize, pageCount: 2, flags: .present),
            PagemapEntry(vaddr: a + 6 * pageSize, pageCount: 6, flags: lazyPresent),
            PagemapEntry(vaddr: a + 32 * pageSize, pageCount: 3, flags: .lazy),
            PagemapEntry(vaddr: a + 40 * pageSize, pageCount: 1, flags: lazyPresent),
        ])
        let pages = "\(dir)/pages-1.img"
        #expect(p10.pagesPath == pages)
        #expect(p10.lazyRuns == [
            LazyRun(address: a + 6 * pageSize, pageCount: 2, data: .file(path: pages, offset: 2 * pageSize)),
            LazyRun(address: a + 8 * pageSize, pageCount: 4, data: .file(path: pages, offset: 4 * pageSize)),
            LazyRun(address: a + 32 * pageSize, pageCount: 3, data: .remote),
            LazyRun(address: a + 40 * pageSize, pageCount: 1, data: .file(path: pages, offset: 8 * pageSize)),
        ])
        #expect(p10.eagerRuns == [LazyRun(address: a + 2 * pageSize, pageCount: 2, data: .file(path: pages, offset: 0))])
        #expect(p10.lazyPageCount == 10)
        // 2 eager + 6 + 1 lazy pages are in the file; nothing for the remote run.
        #expect(try FileManager.default.attributesOfItem(atPath: pages)[.size] as? UInt64 == 9 * pageSize)

        for k in UInt64(0) ..< 6 {
            let page = try #require(try lazyPage(p10, at: a + (6 + k) * pageSize))
            let matches = pageMatches(page, seed: 6, p: k)
            #expect(matches, "page \(k)")
        }
        let eager = try readBytes(path: pages, offset: pageSize, count: basePageSize)
        let eagerMatches = pageMatches(eager, seed: 5, p: 1)
        #expect(eagerMatches)

        let p11 = try set.process(pid: 11)
        #expect(p11.pagesID == 2)
        let page = try #require(try lazyPage(p11, at: a + 3 * pageSize))
        let childMatches = pageMatches(page, seed: 9, p: 3)
        #expect(childMatches)
    }

    /// PE_PARENT pages resolve through a chain of two parent sets (relative `parent` links), possibly
    /// splitting a run where the parent's entries change.
    @Test func parentChain() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x6000_0000_0000
        let vmas = [vma(a, pages: 32)]
        // Grandparent: pages 0..<8 (seed 1).
        try ImageWriter.write(
            directory: temp.sub("gp"),
            processes: [ProcessSpec(pid: 1, ppid: 0, vmas: vmas, runs: [run(a, 8, .present, seed: 1, base: a)])])
        // Parent: 0..<4 unchanged (in its parent), 4..<8 rewritten (seed 2), 8..<12 new (seed 2).
        try ImageWriter.write(
            directory: temp.sub("p"),
            processes: [
                ProcessSpec(
                    pid: 1, ppid: 0, vmas: vmas,
                    runs: [run(a, 4, .parent), run(a + 4 * pageSize, 8, .present, seed: 2, base: a)])
            ],
            parentDirectory: "../gp")
        // Child: 0..<12 lazy from parents, 12..<14 own (seed 3).
        try ImageWriter.write(
            directory: temp.sub("c"),
            processes: [
                ProcessSpec(
                    pid: 1, ppid: 0, vmas: vmas,
                    runs: [run(a, 12, [.lazy, .parent]), run(a + 12 * pageSize, 2, lazyPresent, seed: 3, base: a)])
            ],
            parentDirectory: "../p")

        let process = try ImageSet(directory: temp.sub("c")).process(pid: 1)
        #expect(process.entries[0].flags == [.lazy, .parent])
        let gpPages = temp.sub("c") + "/parent/parent/pages-1.img"
        let pPages = temp.sub("c") + "/parent/pages-1.img"
        #expect(process.lazyRuns == [
            LazyRun(address: a, pageCount: 4, data: .file(path: gpPages, offset: 0)),
            LazyRun(address: a + 4 * pageSize, pageCount: 8, data: .file(path: pPages, offset: 0)),
            LazyRun(address: a + 12 * pageSize, pageCount: 2, data: .file(path: temp.sub("c") + "/pages-1.img", offset: 0)),
        ])
        for p in UInt64(0) ..< 14 {
            let page = try #require(try lazyPage(process, at: a + p * pageSize))
            let seed: UInt64 = p < 4 ? 1 : p < 12 ? 2 : 3
            let matches = pageMatches(page, seed: seed, p: p)
            #expect(matches, "page \(p)")
        }
    }

    /// `in_parent = true` (older CRIU) reads as PE_PARENT.
    @Test func inParentFoldsIntoParentFlag() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x10000
        try ImageWriter.write(
            directory: temp.sub("p"),
            processes: [ProcessSpec(pid: 3, ppid: 0, vmas: [vma(a, pages: 4)], runs: [run(a, 4, .present, seed: 4)])])
        try ImageWriter.write(
            directory: temp.sub("c"),
            processes: [ProcessSpec(pid: 3, ppid: 0, vmas: [vma(a, pages: 4)], runs: [run(a, 4, .lazy)])],
            parentDirectory: temp.sub("p"))  // absolute link
        try editPagemapEntries(temp.sub("c") + "/pagemap-3.img") { entries in
            entries[0].inParent = true
        }
        let process = try ImageSet(directory: temp.sub("c")).process(pid: 3)
        #expect(process.entries[0].flags == [.lazy, .parent])
        #expect(process.lazyRuns == [
            LazyRun(address: a, pageCount: 4, data: .file(path: temp.sub("c") + "/parent/pages-1.img", offset: 0))
        ])
    }

    /// Entries with only `compat_nr_pages` (old images) read with that count.
    @Test func compatNrPages() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x20000
        try ImageWriter.write(
            directory: temp.path,
            processes: [
                ProcessSpec(
                    pid: 4, ppid: 0, vmas: [vma(a, pages: 16)],
                    runs: [run(a, 3, lazyPresent, seed: 1), run(a + 4 * pageSize, 5, lazyPresent, seed: 2)])
            ],
            parentDirectory: nil, pageCounts: .compatNrPages)
        let raw = try ImageFile(path: temp.path + "/pagemap-4.img", kind: .pagemap)
        let first = try raw.decode(Criu_pagemap_entry.self, at: 1, as: "pagemap_entry")
        #expect(!first.hasNrPages && first.compatNrPages == 3)

        let process = try ImageSet(directory: temp.path).process(pid: 4)
        #expect(process.entries.map(\.pageCount) == [3, 5])
        #expect(process.lazyRuns.last == LazyRun(
            address: a + 4 * pageSize, pageCount: 5, data: .file(path: temp.path + "/pages-1.img", offset: 3 * pageSize)))
        let page = try #require(try lazyPage(process, at: a + 6 * pageSize))
        let matches = pageMatches(page, seed: 2, p: 2)
        #expect(matches)
    }

    /// A missing `flags` field means PE_PRESENT, as in CRIU.
    @Test func missingFlagsMeansPresent() throws {
        let temp = try TemporaryDirectory()
        try writeSimpleSet(temp.path)
        try editPagemapEntries(temp.path + "/pagemap-100.img") { entries in entries[0].clearFlags() }
        let process = try ImageSet(directory: temp.path).process(pid: 100)
        #expect(process.entries[0].flags == .present)
        #expect(process.lazyRuns.isEmpty)
        #expect(process.eagerRuns.count == 2)
    }

    /// `dump --lazy-pages` images: LAZY-only entries, no pages file at all.
    @Test func remoteOnlySetNeedsNoPagesFile() throws {
        let temp = try TemporaryDirectory()
        let a: UInt64 = 0x40000
        try ImageWriter.write(
            directory: temp.path,
            processes: [
                ProcessSpec(pid: 5, ppid: 0, vmas: [vma(a, pages: 8)], runs: [run(a, 2, .lazy), run(a + 4 * pageSize, 4, .lazy)])
            ])
        try FileManager.default.removeItem(atPath: temp.path + "/pages-1.img")
        let process = try ImageSet(directory: temp.path).process(pid: 5)
        #expect(process.lazyRuns.map(\.data) == [.remote, .remote])
        #expect(process.lazyPageCount == 6)
    }

    @Test func pagePatternFiller() {
        var page = [UInt8](repeating: 0, count: basePageSize)
        page.withUnsafeMutableBytes { PagePattern.filler(seed: 9, base: 0x1000)(0x3000, $0) }
        #expect(pageMatches(page, seed: 9, p: 2))
        #expect(PagePattern.word(seed: 9, pageIndex: 2, word: 7) == pattern(9, 2, 7))
    }
}
