import Foundation
import TestSupport
import Testing

@testable import CRIUImages

/// One test per validation rule: each builds a corrupt or lying image set (writer + byte surgery) and expects
/// the specific `ImageError`, naming the offending file, before anything could be served.
@Suite struct ValidationTests {
    let pid: Int32 = 100

    /// A fresh valid set (see `writeSimpleSet`) in a temporary directory.
    func simpleSet() throws -> TemporaryDirectory {
        let temp = try TemporaryDirectory()
        try writeSimpleSet(temp.path)
        _ = try ImageSet(directory: temp.path).process(pid: pid)  // valid before the surgery
        return temp
    }

    func open(_ dir: String, pid: Int32 = 100) throws(ImageError) {
        _ = try ImageSet(directory: dir).process(pid: pid)
    }

    /// Writes a one-process set with these VMAs and runs.
    func write(_ dir: String, vmas: [VMA], runs: [RunSpec], parent: String? = nil) throws {
        try ImageWriter.write(
            directory: dir, processes: [ProcessSpec(pid: 100, ppid: 0, vmas: vmas, runs: runs)], parentDirectory: parent)
    }

    // MARK: Missing files

    @Test(arguments: ["inventory.img", "pstree.img", "mm-100.img", "pagemap-100.img", "pages-1.img"])
    func missingFile(name: String) throws {
        let temp = try simpleSet()
        try FileManager.default.removeItem(atPath: temp.sub(name))
        expectImageError(file: temp.sub(name), "missing file") { try open(temp.path) }
    }

    @Test func missingDirectory() throws {
        let temp = try TemporaryDirectory()
        expectImageError(file: temp.sub("nope/inventory.img"), "missing file") {
            _ = try ImageSet(directory: temp.sub("nope"))
        }
    }

    // MARK: Magic

    @Test func badCommonMagic() throws {
        let temp = try simpleSet()
        try patch(temp.sub("pagemap-100.img"), at: 0, le32(0x1234_5678))
        let error = expectImageError(file: temp.sub("pagemap-100.img"), "bad magic") { try open(temp.path) }
        #expect(error?.problem == "bad magic 0x12345678 (expected image 0x54564319)")
    }

    @Test func badTypeMagic() throws {
        let temp = try simpleSet()
        try patch(temp.sub("pagemap-100.img"), at: 4, le32(0x1234_5678))
        let error = expectImageError(file: temp.sub("pagemap-100.img"), "bad magic") { try open(temp.path) }
        #expect(error?.problem == "bad magic 0x12345678 (expected pagemap 0x56084025)")
        #expect(error?.description == "\(temp.sub("pagemap-100.img")): bad magic 0x12345678 (expected pagemap 0x56084025)")
    }

    @Test func wrongImageKind() throws {
        let temp = try simpleSet()
        try writeFile(temp.sub("mm-100.img"), try readFile(temp.sub("pagemap-100.img")))
        let error = expectImageError(file: temp.sub("mm-100.img"), "bad magic") { try open(temp.path) }
        #expect(error?.problem == "bad magic 0x56084025 (expected mm 0x57492820)")
    }

    @Test(arguments: [("inventory.img", "inventory 0x58313116"), ("pstree.img", "image 0x54564319")])
    func badMagicInSetFiles(name: String, expected: String) throws {
        let temp = try simpleSet()
        try patch(temp.sub(name), at: 0, le32(0xDEAD_BEEF))
        let error = expectImageError(file: temp.sub(name), "bad magic") { _ = try ImageSet(directory: temp.path) }
        #expect(error?.problem == "bad magic 0xdeadbeef (expected \(expected))")
    }

    @Test func fileShorterThanMagic() throws {
        let temp = try simpleSet()
        try truncateFile(temp.sub("mm-100.img"), to: 6)
        expectImageError(file: temp.sub("mm-100.img"), "too short") { try open(temp.path) }
    }

    // MARK: Framing

    @Test func truncatedMessage() throws {
        let temp = try simpleSet()
        let path = temp.sub("pagemap-100.img")
        let size = try readFile(path).count
        try truncateFile(path, to: UInt64(size - 2))
        expectImageError(file: path, "truncated message 2") { try open(temp.path) }
    }

    @Test func truncatedLengthWord() throws {
        let temp = try simpleSet()
        let path = temp.sub("pstree.img")
        try writeFile(path, try readFile(path) + [0x05, 0x00])
        expectImageError(file: path, "truncated message 1") { _ = try ImageSet(directory: temp.path) }
    }

    @Test func lengthBeyondEndOfFile() throws {
        let temp = try simpleSet()
        let path = temp.sub("pagemap-100.img")
        try patch(path, at: 8, le32(0x00FF_FFFF))  // the pagemap_head's length
        expectImageError(file: path, "length 16777215 at offset 8 runs beyond the end of the file") {
            try open(temp.path)
        }
    }

    // MARK: Protobuf

    @Test func undecodableEntry() throws {
        let temp = try simpleSet()
        let path = temp.sub("pagemap-100.img")
        try editMessages(path, kind: .pagemap) { messages in messages[1] = [0xFF, 0xFF, 0xFF] }
        expectImageError(file: path, "undecodable protobuf: pagemap_entry (message 1") { try open(temp.path) }
    }

    @Test func entryMissingRequiredField() throws {
        let temp = try simpleSet()
        let path = temp.sub("pagemap-100.img")
        try editPagemapEntries(path) { entries in entries[1].clearVaddr() }
        expectImageError(file: path, "undecodable protobuf: pagemap_entry (message 2") { try open(temp.path) }
    }

    @Test func undecodableMM() throws {
        let temp = try simpleSet()
        let path = temp.sub("mm-100.img")
        try editMessages(path, kind: .mm) { messages in messages[0] = [0x72, 0x10, 0x08] }  // vmas: truncated
        expectImageError(file: path, "undecodable protobuf: mm_entry") { try open(temp.path) }
    }

    @Test func undecodablePstree() throws {
        let temp = try simpleSet()
        let path = temp.sub("pstree.img")
        try editMessages(path, kind: .pstree) { messages in messages[0] = [0x10, 0x01] }  // no pid (required)
        expectImageError(file: path, "undecodable protobuf: pstree_entry") { _ = try ImageSet(directory: temp.path) }
    }

    // MARK: Pagemap vs pages file

    @Test func pagesFileTooShort() throws {
        let temp = try simpleSet()
        let pages = temp.sub("pages-1.img")
        try truncateFile(pages, to: 5 * pageSize)
        expectImageError(
            file: pages, "pagemap-100.img needs 24576 bytes of page data but the file has only 20480"
        ) { try open(temp.path) }
    }

    // MARK: Entry layout

    @Test func unsortedEntries() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x16000, 2, lazyPresent), run(0x11000, 4, lazyPresent)])
        expectImageError(file: temp.sub("pagemap-100.img"), "unsorted entries: entry 1 at 0x11000") { try open(temp.path) }
    }

    @Test func overlappingEntries() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 4, lazyPresent), run(0x14000, 2, lazyPresent)])
        expectImageError(file: temp.sub("pagemap-100.img"), "overlapping entries: entry 1 at 0x14000 overlaps entry 0") {
            try open(temp.path)
        }
    }

    @Test func zeroPageEntry() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 4, lazyPresent), run(0x16000, 0, .lazy)])
        expectImageError(file: temp.sub("pagemap-100.img"), "zero-page entry: entry 1 at 0x16000") { try open(temp.path) }
    }

    @Test func zeroPageEntryWithoutAnyCount() throws {
        let temp = try simpleSet()
        let path = temp.sub("pagemap-100.img")
        try editPagemapEntries(path) { entries in
            entries[0].clearNrPages()
            entries[0].clearCompatNrPages()
        }
        expectImageError(file: path, "zero-page entry: entry 0") { try open(temp.path) }
    }

    @Test func unalignedEntry() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11008, 1, lazyPresent)])
        expectImageError(file: temp.sub("pagemap-100.img"), "unaligned address: entry 0 at 0x11008") { try open(temp.path) }
    }

    @Test func entryWrappingTheAddressSpace() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0xFFFF_FFFF_FFFF_E000, 4, .lazy)])
        expectImageError(file: temp.sub("pagemap-100.img"), "runs past the end of the address space") { try open(temp.path) }
    }

    @Test func parentAndPresentTogether() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 1, [.parent, .present])])
        expectImageError(file: temp.sub("pagemap-100.img"), "both PE_PARENT and PE_PRESENT") { try open(temp.path) }
    }

    // MARK: VMAs

    @Test func lazyEntryOutsideEveryVMA() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x40000, 2, lazyPresent)])
        expectImageError(file: temp.sub("pagemap-100.img"), "LAZY entry 0 at 0x40000 (2 pages): page 0x40000 is outside every VMA") {
            try open(temp.path)
        }
    }

    @Test func lazyEntryPartlyOutsideVMA() throws {
        let temp = try TemporaryDirectory()
        // Runs off the end of the VMA (0x10000-0x20000) into nothing.
        try write(temp.path, vmas: [vma(0x10000, pages: 16), vma(0x30000, pages: 4)], runs: [run(0x1E000, 4, .lazy)])
        expectImageError(file: temp.sub("pagemap-100.img"), "LAZY entry 0 at 0x1e000 (4 pages): page 0x20000 is outside every VMA") {
            try open(temp.path)
        }
    }

    @Test func lazyEntryAcrossAGapBetweenVMAs() throws {
        let temp = try TemporaryDirectory()
        try write(
            temp.path, vmas: [vma(0x10000, pages: 2), vma(0x13000, pages: 2)], runs: [run(0x10000, 5, lazyPresent)])
        expectImageError(file: temp.sub("pagemap-100.img"), "page 0x12000 is outside every VMA") { try open(temp.path) }
    }

    @Test func overlappingVMAs() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 4), vma(0x12000, pages: 4)], runs: [])
        expectImageError(file: temp.sub("mm-100.img"), "overlapping VMAs: VMA 1") { try open(temp.path) }
    }

    /// CRIU 4.2 appends `madvise(MADV_GUARD_INSTALL)` ranges after the real VMAs, out of order and inside them
    /// (zdtm maps12): they are left out, the real VMAs and their pages served; without the guard bit the same
    /// entry is still refused.
    @Test func guardPageEntriesAfterTheRealVMAsAreLeftOut() throws {
        let temp = try TemporaryDirectory()
        var guardRange = vma(0x11000, pages: 1)
        guardRange.status = VMA.guardStatus
        try write(temp.path, vmas: [vma(0x10000, pages: 4), vma(0x20000, pages: 1), guardRange],
                  runs: [run(0x10000, 4, lazyPresent)])
        let process = try ImageSet(directory: temp.path).process(pid: pid)
        #expect(process.vmas.map(\.start) == [0x10000, 0x20000])
        #expect(process.lazyRuns.map(\.pageCount) == [4])

        let unflagged = try TemporaryDirectory()
        try write(unflagged.path, vmas: [vma(0x10000, pages: 4), vma(0x20000, pages: 1), vma(0x11000, pages: 1)],
                  runs: [run(0x10000, 4, lazyPresent)])
        expectImageError(file: unflagged.sub("mm-100.img"), "unsorted VMAs: VMA 2") { try open(unflagged.path) }
    }

    @Test func unalignedVMA() throws {
        let temp = try TemporaryDirectory()
        var bad = vma(0x10000, pages: 4)
        bad.end += 12
        try write(temp.path, vmas: [bad], runs: [])
        expectImageError(file: temp.sub("mm-100.img"), "unaligned address: VMA 0") { try open(temp.path) }
    }

    // MARK: Parent sets

    @Test func parentPagesWithoutParentSet() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, [.lazy, .parent])])
        expectImageError(file: temp.sub("pagemap-100.img"), "entry 0 at 0x11000 is PE_PARENT but there is no parent image set") {
            try open(temp.path)
        }
    }

    @Test func parentPagesNotInParent() throws {
        let temp = try TemporaryDirectory()
        try write(temp.sub("p"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, .present)])
        try write(temp.sub("c"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 3, [.lazy, .parent])], parent: "../p")
        expectImageError(
            file: temp.sub("c/pagemap-100.img"), "PE_PARENT page 0x13000 of entry 0 is not present in the parent image set"
        ) { try open(temp.sub("c")) }
    }

    @Test func parentPagesWithoutDataInParent() throws {
        let temp = try TemporaryDirectory()
        try write(temp.sub("p"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, .lazy)])  // remote there
        try write(temp.sub("c"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, [.lazy, .parent])], parent: "../p")
        expectImageError(file: temp.sub("c/pagemap-100.img"), "has no data") { try open(temp.sub("c")) }
    }

    @Test func parentSetMissingItsPagemap() throws {
        let temp = try TemporaryDirectory()
        try write(temp.sub("p"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, .present)])
        try write(temp.sub("c"), vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, [.lazy, .parent])], parent: "../p")
        try FileManager.default.removeItem(atPath: temp.sub("p/pagemap-100.img"))
        expectImageError(file: temp.sub("c/parent/pagemap-100.img"), "missing file") { try open(temp.sub("c")) }
    }

    @Test func parentLinkCycle() throws {
        let temp = try TemporaryDirectory()
        try write(temp.path, vmas: [vma(0x10000, pages: 16)], runs: [run(0x11000, 2, [.lazy, .parent])], parent: ".")
        expectImageError(file: temp.sub("parent"), "parent link cycle") { try open(temp.path) }
    }

    // MARK: pstree

    @Test func pidNotInPstree() throws {
        let temp = try simpleSet()
        expectImageError(file: temp.sub("pstree.img"), "pid 999 is not in pstree (tasks: 100)") {
            try open(temp.path, pid: 999)
        }
    }

    @Test func emptyPstree() throws {
        let temp = try TemporaryDirectory()
        try ImageWriter.write(directory: temp.path, processes: [])
        expectImageError(file: temp.sub("pstree.img"), "no tasks") { _ = try ImageSet(directory: temp.path) }
    }

    @Test func duplicatePidInPstree() throws {
        let temp = try simpleSet()
        try editMessages(temp.sub("pstree.img"), kind: .pstree) { messages in messages.append(messages[0]) }
        expectImageError(file: temp.sub("pstree.img"), "pid 100 appears twice") { _ = try ImageSet(directory: temp.path) }
    }
}
