import CRIUImages
import LinuxSupport

/// Image sets for scenario tests, the stress loop and `lazy-pages write-images`: CRIU images of made-up process
/// trees whose page data follows `PagePattern` (seed `1000 + pid`, page 0 at the layout's base address), so any
/// page can be recomputed. Tasks get pids 100, 101, ...; the first is the parent of the others.
public enum ImageLayout: String, CaseIterable, Sendable {
    /// Per task three VMAs (1/2, 1/4 and 1/8 of the size) with lazy runs, an eager run and holes that must read
    /// zeros: every scenario can run on it.
    case mixed
    /// Per task `vmaCount` one-page VMAs separated by one-page gaps (so they never merge): every 5th page eager,
    /// every 7th never dumped (zeros), the others lazy.
    case manyVMAs = "many-vmas"
    /// Per task one VMA of the whole size holding about 300 short lazy runs (1 to 4 pages) at random places and
    /// two eager pages; everything else must read zeros.
    case sparse
    /// Per task one VMA of the whole size, all of it one lazy run of zero pages: the pages file is all holes, so a
    /// 16 GiB image takes no disk (for memory and scaling measurements).
    case lazyZeros = "lazy-zeros"

    public static let base: UInt64 = 0x5b00_0000_0000
    static let page = UInt64(basePageSize)

    /// Writes `tasks` processes of `bytesPerTask` each (rounded to whole pages, at least 64 pages); the last
    /// `zombies` of them as CRIU dumps zombies (dead in `core-<pid>.img`, no memory images).
    public func write(
        to directory: String, tasks: Int = 2, bytesPerTask: UInt64 = 4 << 20, vmaCount: Int = 5000, seed: UInt64 = 1,
        zombies: Int = 0
    ) throws {
        precondition(tasks >= 1, "at least one task")
        precondition(zombies >= 0 && zombies < tasks, "the root task is alive")
        let pages = max(bytesPerTask / Self.page, 64)
        let pids = (0..<tasks).map { UInt32(100 + $0) }
        let specs = pids.enumerated().map { index, pid in
            if index >= tasks - zombies { return ProcessSpec.zombie(pid: pid, ppid: pids[0]) }
            let fill = PagePattern.filler(seed: 1000 + UInt64(pid), base: Self.base)
            let (vmas, runs): ([VMA], [RunSpec])
            switch self {
            case .mixed: (vmas, runs) = Self.mixed(pages: pages, fill: fill)
            case .manyVMAs: (vmas, runs) = Self.manyVMAs(count: max(vmaCount, 1), fill: fill)
            case .sparse: (vmas, runs) = Self.sparse(pages: pages, seed: seed &+ UInt64(pid), fill: fill)
            case .lazyZeros:
                (vmas, runs) = ([Self.vma(Self.base, pages: pages)],
                                [RunSpec(address: Self.base, pageCount: Int(pages), flags: Self.lazy)])
            }
            return ProcessSpec(pid: pid, ppid: index == 0 ? 0 : pids[0], vmas: vmas, runs: runs)
        }
        try ImageWriter.write(directory: directory, processes: specs)
    }

    typealias Fill = @Sendable (UInt64, UnsafeMutableRawBufferPointer) -> Void
    static let lazy: PagemapFlags = [.lazy, .present]

    static func vma(_ start: UInt64, pages: UInt64) -> VMA {
        VMA(start: start, end: start + pages * page, prot: 3, flags: 0x22, status: 0x41)
    }

    private static func mixed(pages: UInt64, fill: @escaping Fill) -> ([VMA], [RunSpec]) {
        let sizes = [pages / 2, pages / 4, pages / 8].map { max($0, 16) }
        // VMAs a power of two apart, leaving room after each for mremap growth.
        var spacing: UInt64 = 16 << 20
        while spacing < 2 * sizes[0] * page { spacing *= 2 }
        let starts = (0..<3).map { base + UInt64($0) * spacing }
        let a = starts[0], b = starts[1], c = starts[2]
        let (na, nb, nc) = (sizes[0], sizes[1], sizes[2])
        let eagerAt = na * 40 / 100, eagerPages = max(na / 25, 1), holeEnd = na * 47 / 100
        var runs = [
            RunSpec(address: a, pageCount: Int(eagerAt), flags: lazy, fill: fill),
            RunSpec(address: a + eagerAt * page, pageCount: Int(eagerPages), flags: [.present], fill: fill),
        ]
        if holeEnd < na { runs.append(RunSpec(address: a + holeEnd * page, pageCount: Int(na - holeEnd), flags: lazy, fill: fill)) }
        runs.append(RunSpec(address: b, pageCount: Int(nb), flags: lazy, fill: fill))
        runs.append(RunSpec(address: c + (nc / 16) * page, pageCount: Int(nc * 7 / 8 - nc / 16), flags: lazy, fill: fill))
        return ([vma(a, pages: na), vma(b, pages: nb), vma(c, pages: nc)], runs)
    }

    private static func manyVMAs(count: Int, fill: @escaping Fill) -> ([VMA], [RunSpec]) {
        var vmas: [VMA] = []
        var runs: [RunSpec] = []
        vmas.reserveCapacity(count)
        runs.reserveCapacity(count)
        for i in 0..<count {
            let start = base + UInt64(i) * 2 * page
            vmas.append(vma(start, pages: 1))
            if i % 7 == 0 { continue }
            runs.append(RunSpec(address: start, pageCount: 1, flags: i % 5 == 0 ? [.present] : lazy, fill: fill))
        }
        return (vmas, runs)
    }

    private static func sparse(pages: UInt64, seed: UInt64, fill: @escaping Fill) -> ([VMA], [RunSpec]) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next(_ bound: UInt64) -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state % bound
        }
        let target = min(300, Int(pages / 8))
        var starts = Set<UInt64>()
        while starts.count < target { starts.insert(next(pages - 4) / 8 * 8) }  // 8-page slots: runs never touch
        var runs: [RunSpec] = []
        for (i, slot) in starts.sorted().enumerated() {
            let count = 1 + next(4)
            let eager = i == 7 || i == target / 2
            runs.append(RunSpec(address: base + slot * page, pageCount: Int(eager ? 1 : count),
                                flags: eager ? [.present] : lazy, fill: fill))
        }
        return ([vma(base, pages: pages)], runs)
    }
}

/// Parses sizes like `4096`, `512K`, `64M`, `1G` (binary units).
public func parseByteSize(_ text: String) -> UInt64? {
    guard let last = text.last else { return nil }
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
    if let unit = units[last] {
        guard let n = UInt64(text.dropLast()) else { return nil }
        let (product, overflow) = n.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }
    return UInt64(text)
}
