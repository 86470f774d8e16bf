import CRIUImages
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The pages a page server hands out: every live task's `LAZY` runs that have data in a local pages file (as CRIU's page
/// server serves its lazy page pipes), as (file descriptor, offset). Nothing is read until asked for; each pages
/// file is opened once, read-only, and read with `sendfile`/`pread` at explicit offsets, so any number of
/// connection threads share the descriptors.
public final class ServedImages: @unchecked Sendable {
    public struct Run: Sendable {
        public var address: UInt64
        public var pageCount: Int
        public var descriptor: Int32
        public var offset: UInt64
        public var end: UInt64 { address + UInt64(pageCount * basePageSize) }
    }

    public let directory: String
    /// Runs by virtual pid, sorted by address.
    public let runs: [Int32: [Run]]
    private let descriptors: [Int32]

    public init(directory: String) throws {
        let images = try ImageSet(directory: directory)
        var files: [String: Int32] = [:]
        var runs: [Int32: [Run]] = [:]
        do {
            for task in images.tasks {
                let pid = Int32(bitPattern: task.pid)
                // A dead task (a zombie) has no memory images and no pages; as in CRIU's page server, skip it.
                guard try images.hasMemory(pid: pid) else { continue }
                let image = try images.process(pid: pid)
                var list: [Run] = []
                for run in image.lazyRuns {
                    guard case .file(let path, let offset) = run.data else { continue }
                    let fd: Int32
                    if let known = files[path] {
                        fd = known
                    } else {
                        fd = open(path, O_RDONLY | O_CLOEXEC)
                        guard fd >= 0 else { throw ImageError(file: path, problem: "cannot open: \(SystemCallError.reason())") }
                        files[path] = fd
                    }
                    var info = stat()
                    fstat(fd, &info)
                    guard offset + UInt64(run.pageCount * basePageSize) <= UInt64(info.st_size) else {
                        throw ImageError(file: path, problem: "page data at offset \(offset) runs past the end of the file (\(info.st_size) bytes)")
                    }
                    list.append(Run(address: run.address, pageCount: run.pageCount, descriptor: fd, offset: offset))
                }
                runs[pid] = list.sorted { $0.address < $1.address }
            }
        } catch {
            for fd in files.values { close(fd) }
            throw error
        }
        self.directory = directory
        self.runs = runs
        descriptors = Array(files.values)
    }

    deinit { for fd in descriptors { close(fd) } }

    /// Where the pages from `address` of `pid` are: the descriptor, the file offset and how many pages are stored
    /// contiguously from there (at most `maxPages`: clamped to the end of the stored run). Nil when unknown.
    public func locate(pid: Int32, address: UInt64, maxPages: UInt64) -> (descriptor: Int32, offset: UInt64, pageCount: UInt64)? {
        guard let list = runs[pid], address % UInt64(basePageSize) == 0 else { return nil }
        var low = 0
        var high = list.count
        while low < high {
            let mid = (low + high) / 2
            if list[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        guard low < list.count, list[low].address <= address else { return nil }
        let run = list[low]
        let skip = address - run.address
        let available = (run.end - address) / UInt64(basePageSize)
        return (run.descriptor, run.offset + skip, min(maxPages, available))
    }

    /// Total pages served per pid.
    public var pageCount: Int { runs.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.pageCount } } }
}
