import LinuxSupport

/// Where a restore's `LAZY` pages come from.
public enum LazyPageSource: Sendable, Hashable {
    /// From the image set's pages files (or a page server where they have no data).
    case images
    /// From a page server, always, even where the image set holds data for them (a copy of a full dump, an older
    /// dump): as in CRIU, the page server is the truth. The set's pages files are then not looked at at all — the
    /// non-lazy pages in them are `criu restore`'s business.
    case pageServer
}

/// Everything a lazy-pages daemon needs about one task of an image set, validated: its VMAs, its pagemap,
/// and where every page it must deliver comes from. Holds no page data, only file paths and offsets.
public struct ProcessImage: Sendable {
    /// The virtual pid naming `mm-<pid>.img` and `pagemap-<pid>.img`.
    public let pid: Int32
    /// The dump-time mappings, sorted by address, non-overlapping.
    public let vmas: [VMA]
    /// `pagemap_head.pages_id`: the page data is in `pages-<pagesID>.img`.
    public let pagesID: UInt32
    /// The pagemap entries as read (sorted, non-overlapping, non-empty, page aligned).
    public let entries: [PagemapEntry]
    /// `LAZY` entries, sorted by address, split at VMA boundaries, `PE_PARENT` resolved to the parent's file.
    public let lazyRuns: [LazyRun]
    /// `PRESENT`-but-not-`LAZY` entries (and non-lazy `PE_PARENT` ones), which `criu restore` fills itself;
    /// same shape as ``lazyRuns``. Empty with ``LazyPageSource/pageServer``.
    public let eagerRuns: [LazyRun]
    /// Path of this set's `pages-<pagesID>.img` (which may not exist when no page is present locally).
    public let pagesPath: String

    init(directory: String, pid: Int32, lazyPages: LazyPageSource = .images) throws(ImageError) {
        let vmas = try Self.readVMAs(path: "\(directory)/mm-\(pid).img")
        let pagemap = try PagemapFile(directory: directory, pid: pid, checkPagesFile: lazyPages == .images)
        var chain = ParentChain(pid: pid, pagemap: pagemap)
        let page = UInt64(basePageSize)

        var lazyRuns: [LazyRun] = []
        var eagerRuns: [LazyRun] = []
        lazyRuns.reserveCapacity(pagemap.entries.count)
        for (number, entry) in pagemap.entries.enumerated() {
            let lazy = entry.flags.contains(.lazy)
            let hasData = entry.flags.contains(.present) || entry.flags.contains(.parent)
            guard lazy || hasData else { continue }  // nothing to deliver or restore
            if !lazy && lazyPages == .pageServer { continue }  // criu restore's, and its data not looked at
            var runs = lazy ? lazyRuns : eagerRuns
            if lazy { lazyRuns = [] } else { eagerRuns = [] }  // keep `runs` uniquely referenced

            // Walk the VMAs the entry spans; each piece stays inside one VMA.
            var vmaIndex = Self.firstVMA(endingAfter: entry.vaddr, in: vmas)
            var cursor = entry.vaddr
            while cursor < entry.end {
                guard vmaIndex < vmas.count, vmas[vmaIndex].start <= cursor else {
                    throw ImageError(
                        file: pagemap.path,
                        problem: "\(lazy ? "LAZY " : "")entry \(number) at \(hex(entry.vaddr))"
                            + " (\(entry.pageCount) pages): page \(hex(cursor)) is outside every VMA")
                }
                let vma = vmas[vmaIndex]
                let pieceEnd = min(entry.end, vma.end)
                if lazy && lazyPages == .pageServer {
                    runs.append(
                        LazyRun(address: cursor, pageCount: Int((pieceEnd - cursor) / page), data: .remote))
                } else if entry.flags.contains(.present) {
                    let offset = pagemap.fileOffsets[number] + (cursor - entry.vaddr)
                    runs.append(
                        LazyRun(
                            address: cursor, pageCount: Int((pieceEnd - cursor) / page),
                            data: .file(path: pagemap.pagesPath, offset: offset)))
                } else if entry.flags.contains(.parent) {
                    try chain.resolve(address: cursor, end: pieceEnd, level: 0, entryNumber: number, into: &runs)
                } else {
                    runs.append(
                        LazyRun(address: cursor, pageCount: Int((pieceEnd - cursor) / page), data: .remote))
                }
                cursor = pieceEnd
                if pieceEnd == vma.end { vmaIndex += 1 }
            }
            if lazy { lazyRuns = runs } else { eagerRuns = runs }
        }

        self.pid = pid
        self.vmas = vmas
        self.pagesID = pagemap.pagesID
        self.entries = pagemap.entries
        self.lazyRuns = lazyRuns
        self.eagerRuns = eagerRuns
        self.pagesPath = pagemap.pagesPath
    }

    /// Reads and validates the VMA list of `mm-<pid>.img`: exactly one `mm_entry`, every VMA non-empty,
    /// page aligned, sorted and non-overlapping. Guard-page entries (`VMA.guardStatus`) are left out.
    static func readVMAs(path: String) throws(ImageError) -> [VMA] {
        let file = try ImageFile(path: path, kind: .mm)
        guard file.messages.count == 1 else {
            throw ImageError(file: path, problem: "expected one mm_entry, found \(file.messages.count) messages")
        }
        let mm = try file.decode(Criu_mm_entry.self, at: 0, as: "mm_entry")
        let page = UInt64(basePageSize)
        var vmas: [VMA] = []
        vmas.reserveCapacity(mm.vmas.count)
        for (index, raw) in mm.vmas.enumerated() {
            let what = "VMA \(index) (\(hex(raw.start))-\(hex(raw.end)))"
            guard raw.start % page == 0, raw.end % page == 0 else {
                throw ImageError(file: path, problem: "unaligned address: \(what) is not page aligned")
            }
            guard raw.start < raw.end else { throw ImageError(file: path, problem: "\(what) is empty or inverted") }
            // Guard pages (zdtm maps12), not a mapping: nothing for us to deliver, and refusing them as unsorted
            // refused the whole restore.
            if raw.status & VMA.guardStatus != 0 { continue }
            if let previous = vmas.last, raw.start < previous.end {
                throw ImageError(
                    file: path,
                    problem: "\(raw.start < previous.start ? "unsorted" : "overlapping") VMAs: \(what) starts"
                        + " below the end of VMA \(index - 1) (\(hex(previous.start))-\(hex(previous.end)))")
            }
            vmas.append(VMA(start: raw.start, end: raw.end, prot: raw.prot, flags: raw.flags, status: raw.status))
        }
        return vmas
    }

    /// Index of the first VMA with `end > address` (`vmas.count` if none).
    static func firstVMA(endingAfter address: UInt64, in vmas: [VMA]) -> Int {
        var low = 0
        var high = vmas.count
        while low < high {
            let mid = (low + high) / 2
            if vmas[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// The VMA containing `address`, if any.
    public func vma(containing address: UInt64) -> VMA? {
        let index = Self.firstVMA(endingAfter: address, in: vmas)
        guard index < vmas.count, vmas[index].start <= address else { return nil }
        return vmas[index]
    }

    /// The lazy run containing `address`, if any (binary search).
    public func lazyRun(containing address: UInt64) -> LazyRun? {
        var low = 0
        var high = lazyRuns.count
        while low < high {
            let mid = (low + high) / 2
            if lazyRuns[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        guard low < lazyRuns.count, lazyRuns[low].address <= address else { return nil }
        return lazyRuns[low]
    }

    /// Total pages in ``lazyRuns``.
    public var lazyPageCount: Int { lazyRuns.reduce(0) { $0 + $1.pageCount } }
}
