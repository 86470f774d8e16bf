// STAND-IN, to be replaced: a minimal reader of pstree/mm/pagemap images (no parent-image resolution).

public struct ImageSet: Sendable {
    public let directory: String
    public let tasks: [TaskEntry]

    public init(directory: String) throws(ImageError) {
        self.directory = directory
        let messages = try StandInWire.readImage(directory + "/pstree.img", magic: StandInWire.pstreeMagic)
        tasks = messages.map { m in
            var threads = (m.varints[5] ?? []).map { UInt32(truncatingIfNeeded: $0) }
            for packed in m.bytes[5] ?? [] {
                var i = 0
                var value: UInt64 = 0
                var shift: UInt64 = 0
                while i < packed.count {
                    value |= UInt64(packed[i] & 0x7F) << shift
                    if packed[i] & 0x80 == 0 {
                        threads.append(UInt32(truncatingIfNeeded: value))
                        value = 0
                        shift = 0
                    } else {
                        shift += 7
                    }
                    i += 1
                }
            }
            func u32(_ f: Int) -> UInt32 { UInt32(truncatingIfNeeded: m.u64(f) ?? 0) }
            return TaskEntry(pid: u32(1), ppid: u32(2), pgid: u32(3), sid: u32(4), threads: threads)
        }
    }

    public func process(pid: Int32) throws(ImageError) -> ProcessImage {
        let mm = try StandInWire.readImage(directory + "/mm-\(pid).img", magic: StandInWire.mmMagic)
        guard let mmEntry = mm.first else { throw ImageError(file: "mm-\(pid).img", problem: "no mm_entry") }
        var vmas: [VMA] = []
        for raw in mmEntry.bytes[14] ?? [] {
            let v = try StandInWire.decode(raw[...], file: "mm-\(pid).img")
            func u32(_ f: Int) -> UInt32 { UInt32(truncatingIfNeeded: v.u64(f) ?? 0) }
            vmas.append(VMA(start: v.u64(1) ?? 0, end: v.u64(2) ?? 0, prot: u32(5), flags: u32(6), status: u32(7)))
        }
        let pm = try StandInWire.readImage(directory + "/pagemap-\(pid).img", magic: StandInWire.pagemapMagic)
        guard let head = pm.first else { throw ImageError(file: "pagemap-\(pid).img", problem: "no pagemap_head") }
        let pagesID = UInt32(truncatingIfNeeded: head.u64(1) ?? 0)
        let pagesPath = directory + "/pages-\(pagesID).img"
        var lazy: [LazyRun] = []
        var eager: [LazyRun] = []
        var offset: UInt64 = 0
        for e in pm.dropFirst() {
            let vaddr = e.u64(1) ?? 0
            let count = Int(e.u64(5) ?? e.u64(2) ?? 0)
            var flags = PagemapFlags(rawValue: UInt32(truncatingIfNeeded: e.u64(4) ?? 0))
            if (e.u64(3) ?? 0) != 0 { flags.insert(.parent) }
            let inThisFile = flags.contains(.present) && !flags.contains(.parent)
            let data: PageData = inThisFile ? .file(path: pagesPath, offset: offset) : .remote
            if inThisFile { offset += UInt64(count * criuPageSize) }
            // Split at VMA boundaries.
            var address = vaddr
            let end = vaddr + UInt64(count * criuPageSize)
            while address < end {
                guard let vma = vmas.first(where: { $0.start <= address && address < $0.end }) else {
                    throw ImageError(
                        file: "pagemap-\(pid).img", problem: "page 0x\(String(address, radix: 16)) is in no VMA")
                }
                let pieceEnd = min(end, vma.end)
                var pieceData = data
                if case .file(let path, let base) = data { pieceData = .file(path: path, offset: base + (address - vaddr)) }
                let run = LazyRun(address: address, pageCount: Int((pieceEnd - address) / UInt64(criuPageSize)), data: pieceData)
                if flags.contains(.lazy) { lazy.append(run) } else if flags.contains(.present) { eager.append(run) }
                address = pieceEnd
            }
        }
        return ProcessImage(pid: pid, vmas: vmas, pagesID: pagesID, lazyRuns: lazy, eagerRuns: eager)
    }
}
