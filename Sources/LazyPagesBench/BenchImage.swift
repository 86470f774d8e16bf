import CRIUImages
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// A one-task CRIU image for the benchmark: one private anonymous VMA of `bytes` at `base`, all of it one
/// LAZY|PRESENT run of `PagePattern` pages in `pages-1.img` — or, with `remote`, the same dump as a page-server
/// client sees it: one LAZY-only run and no page data (`criu dump --lazy-pages` leaves that).
struct BenchImage {
    static let base: UInt64 = 0x1000_0000_0000
    let directory: String
    let bytes: Int
    var pages: Int { bytes / basePageSize }
    var pagesFile: String { directory + "/pages-1.img" }

    init(directory: String, bytes: Int, seed: UInt64, remote: Bool = false) throws {
        self.directory = directory
        self.bytes = bytes
        let end = Self.base + UInt64(bytes)
        let process = ProcessSpec(
            pid: 1, ppid: 0,
            vmas: [VMA(start: Self.base, end: end, prot: 3, flags: 0x22, status: 0x41)],
            runs: [
                RunSpec(
                    address: Self.base, pageCount: bytes / basePageSize, flags: remote ? [.lazy] : [.lazy, .present],
                    fill: PagePattern.filler(seed: seed, base: Self.base))
            ])
        try ImageWriter.write(directory: directory, processes: [process])
        // Written back now, so that the kernel's writeback of a just-written GiB does not compete with the
        // measurements (it made the first ceiling pass 3x slower); the pages stay in the page cache.
        let fd = remote ? -1 : open(pagesFile, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}
