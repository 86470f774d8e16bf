import CRIUImages
import LinuxSupport

/// Image sets made up for demos, tests and benchmarks: realistic layouts of any size.
public enum SyntheticImages {
    /// Where synthetic tasks' memory lives: high in the address space, clear of what the workload itself maps.
    public static let base: UInt64 = 0x5c00_0000_0000

    /// The fewest pages `writeMixed` gives a task (its four VMAs need that many to have their shapes).
    public static let minimumPagesPerTask = 64

    /// The pages of memory each of `tasks` tasks gets from `writeMixed` for `totalBytes` in all: an equal share,
    /// rounded down to whole pages, and at least `minimumPagesPerTask`.
    public static func mixedPagesPerTask(tasks: Int, totalBytes: UInt64) -> Int {
        max(minimumPagesPerTask, Int(totalBytes / UInt64(basePageSize)) / tasks)
    }

    /// `tasks` tasks (pids 1000, 1001, ...; the first is the others' parent) sharing `totalBytes` of memory
    /// (`mixedPagesPerTask` pages each). Each task has four VMAs: a large one mostly lazy with an eager run and a
    /// never-dumped hole (reads zero), two medium all-lazy ones, and a small one with every other page dumped. Every
    /// task has its own bytes.
    public static func writeMixed(directory: String, tasks: Int, totalBytes: UInt64) throws {
        precondition(tasks >= 1)
        let page = UInt64(basePageSize)
        let pagesPerTask = mixedPagesPerTask(tasks: tasks, totalBytes: totalBytes)
        let specs: [ProcessSpec] = (0..<tasks).map { index in
            let pid = UInt32(1000 + index)
            let fill = PagePattern.filler(seed: 0xD3_0000 + UInt64(pid), base: base)
            let big = pagesPerTask * 6 / 10, medium = pagesPerTask * 15 / 100
            let small = pagesPerTask - big - 2 * medium
            var vmas: [VMA] = []
            var runs: [RunSpec] = []
            var address = base
            func vma(_ pages: Int) -> UInt64 {
                let start = address
                vmas.append(VMA(start: start, end: start + UInt64(pages) * page, prot: 3, flags: 0x22, status: 0x41))
                address = start + UInt64(pages) * page + 16 * page  // an unmapped gap between VMAs
                return start
            }
            let lazy: PagemapFlags = [.lazy, .present]
            let a = vma(big)
            let eager = max(1, big / 50), hole = max(1, big / 50)
            runs.append(RunSpec(address: a, pageCount: big / 2, flags: lazy, fill: fill))
            runs.append(RunSpec(address: a + UInt64(big / 2) * page, pageCount: eager, flags: [.present], fill: fill))
            let rest = big / 2 + eager + hole
            runs.append(RunSpec(address: a + UInt64(rest) * page, pageCount: big - rest, flags: lazy, fill: fill))
            for _ in 0..<2 {
                let m = vma(medium)
                runs.append(RunSpec(address: m, pageCount: medium, flags: lazy, fill: fill))
            }
            let s = vma(small)
            for p in stride(from: 0, to: small, by: 2) {
                runs.append(RunSpec(address: s + UInt64(p) * page, pageCount: 1, flags: lazy, fill: fill))
            }
            return ProcessSpec(pid: pid, ppid: index == 0 ? 1 : 1000, vmas: vmas, runs: runs)
        }
        try ImageWriter.write(directory: directory, processes: specs)
    }
}
