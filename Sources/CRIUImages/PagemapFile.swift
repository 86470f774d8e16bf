import LinuxSupport

/// A validated `pagemap-<pid>.img` of one image set, with each present entry's offset in the pages file.
///
/// Validation: magic and framing, a `pagemap_head` first, every entry decodable, page aligned, non-empty,
/// not wrapping the address space, sorted and non-overlapping, `PE_PARENT` and `PE_PRESENT` not both set,
/// and the pages file (`pages-<pages_id>.img`, only its size is looked at) large enough for every present page.
struct PagemapFile: Sendable {
    /// The image set directory the file is in.
    let directory: String
    let path: String
    let pagesID: UInt32
    /// Path of `pages-<pagesID>.img` in `directory`.
    let pagesPath: String
    let entries: [PagemapEntry]
    /// For each entry: byte offset of its first page in the pages file (meaningful for present entries).
    let fileOffsets: [UInt64]

    /// With `checkPagesFile` false the pages file is not looked at (its pages are not ours to serve).
    init(directory: String, pid: Int32, checkPagesFile: Bool = true) throws(ImageError) {
        let path = "\(directory)/pagemap-\(pid).img"
        let file = try ImageFile(path: path, kind: .pagemap)
        guard !file.messages.isEmpty else {
            throw ImageError(file: path, problem: "no pagemap_head (the file has no messages)")
        }
        let head = try file.decode(Criu_pagemap_head.self, at: 0, as: "pagemap_head")
        self.directory = directory
        self.path = path
        self.pagesID = head.pagesID
        self.pagesPath = "\(directory)/pages-\(head.pagesID).img"

        let page = UInt64(basePageSize)
        var entries: [PagemapEntry] = []
        var offsets: [UInt64] = []
        entries.reserveCapacity(file.messages.count - 1)
        offsets.reserveCapacity(file.messages.count - 1)
        var presentBytes: UInt64 = 0
        for index in 1 ..< file.messages.count {
            let raw = try file.decode(Criu_pagemap_entry.self, at: index, as: "pagemap_entry")
            let number = index - 1
            let count = raw.hasNrPages ? raw.nrPages : UInt64(raw.compatNrPages)
            var flags = PagemapFlags(rawValue: raw.flags)
            if raw.hasInParent && raw.inParent {
                flags.insert(.parent)
            } else if !raw.hasFlags {
                flags = .present
            }
            let what = "entry \(number) at \(hex(raw.vaddr))"
            guard raw.vaddr % page == 0 else {
                throw ImageError(file: path, problem: "unaligned address: \(what) is not page aligned")
            }
            guard count > 0 else {
                throw ImageError(file: path, problem: "zero-page entry: \(what) has no pages")
            }
            guard count <= (UInt64.max - raw.vaddr) / page else {
                throw ImageError(
                    file: path, problem: "\(what) (\(count) pages) runs past the end of the address space")
            }
            guard !(flags.contains(.parent) && flags.contains(.present)) else {
                throw ImageError(file: path, problem: "\(what) is marked both PE_PARENT and PE_PRESENT")
            }
            let entry = PagemapEntry(vaddr: raw.vaddr, pageCount: count, flags: flags)
            if let previous = entries.last {
                if entry.vaddr < previous.vaddr {
                    throw ImageError(
                        file: path,
                        problem: "unsorted entries: \(what) comes after entry \(number - 1) at"
                            + " \(hex(previous.vaddr))")
                }
                if entry.vaddr < previous.end {
                    throw ImageError(
                        file: path,
                        problem: "overlapping entries: \(what) overlaps entry \(number - 1)"
                            + " (\(hex(previous.vaddr))-\(hex(previous.end)))")
                }
            }
            offsets.append(presentBytes)
            if flags.contains(.present) {
                let (sum, overflow) = presentBytes.addingReportingOverflow(count * page)
                guard !overflow else { throw ImageError(file: path, problem: "present pages overflow 64 bits") }
                presentBytes = sum
            }
            entries.append(entry)
        }
        self.entries = entries
        self.fileOffsets = offsets

        // Only the size of the pages file matters here; a set without present pages (remote lazy pages)
        // may lack the file altogether.
        if presentBytes > 0 && checkPagesFile {
            let fileName = "pagemap-\(pid).img"
            switch try fileStatus(pagesPath) {
            case .missing:
                throw ImageError(
                    file: pagesPath,
                    problem: "missing file (\(fileName) has \(presentBytes / page) present pages)")
            case .regular(let size):
                guard size >= presentBytes else {
                    throw ImageError(
                        file: pagesPath,
                        problem: "pages file too short: \(fileName) needs \(presentBytes) bytes of page data"
                            + " but the file has only \(size)")
                }
            case .directory, .other:
                throw ImageError(file: pagesPath, problem: "not a regular file")
            }
        }
    }

    /// Index of the entry whose pages include `address`, if any.
    func entryIndex(containing address: UInt64) -> Int? {
        var low = 0
        var high = entries.count
        while low < high {  // first entry with end > address
            let mid = (low + high) / 2
            if entries[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        guard low < entries.count, entries[low].vaddr <= address else { return nil }
        return low
    }
}
