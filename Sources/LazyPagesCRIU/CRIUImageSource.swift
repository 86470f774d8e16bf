import CRIUImages
import LazyPagesEngine
import LinuxSupport

/// Errors of the CRIU front end, each naming what was wrong.
public struct LazyPagesError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Pages from a local CRIU image directory: every task's images are read and validated up front (a corrupt image
/// fails the restore before any page is served), and each pages file is mapped once, read-only.
public final class CRIUImageSource: @unchecked Sendable {
    public let images: ImageSet
    private var processes: [Int32: ProcessImage] = [:]
    private var files: [String: MappedFile] = [:]

    /// Reads and validates `directory`. With `remote`, LAZY pages without local data are allowed (a page server
    /// has them); otherwise every lazy page must be in a local pages file.
    public init(directory: String, allowRemoteOnly: Bool = false) throws {
        images = try ImageSet(directory: directory)
        for task in images.tasks {
            let pid = Int32(bitPattern: task.pid)
            let image = try images.process(pid: pid)
            for run in image.lazyRuns {
                switch run.data {
                case .file(let path, let offset):
                    let file = try mapped(path)
                    let end = offset + UInt64(run.pageCount * criuPageSize)
                    guard end <= UInt64(file.size) else {
                        throw ImageError(file: path, problem: "page data at offset \(offset) runs past the end of the file (\(file.size) bytes)")
                    }
                case .remote:
                    guard allowRemoteOnly else {
                        throw ImageError(
                            file: "\(directory)/pagemap-\(pid).img",
                            problem: "lazy pages at 0x\(String(run.address, radix: 16)) have no local data (a dump for a page server?); use --page-server")
                    }
                }
            }
            processes[pid] = image
        }
    }

    private func mapped(_ path: String) throws -> MappedFile {
        if let file = files[path] { return file }
        let file = try MappedFile(path: path)
        files[path] = file
        return file
    }

    /// Image pids of the tasks in `pstree.img`.
    public var taskPids: [Int32] { images.tasks.map { Int32(bitPattern: $0.pid) } }

    /// Pages the daemon must deliver to the task `pid`, or nil when the images have no such task.
    public func addressSpace(forTask pid: Int32) -> AddressSpace? {
        guard let image = processes[pid] else { return nil }
        var extents: [LazyExtent] = []
        extents.reserveCapacity(image.lazyRuns.count)
        for run in image.lazyRuns {
            var data: UnsafeRawPointer?
            if case .file(let path, let offset) = run.data, let base = files[path]?.base {
                data = base + Int(offset)
            }
            extents.append(LazyExtent(start: run.address, dumpAddress: run.address, data: data, pageCount: run.pageCount))
        }
        return AddressSpace(extents: extents)
    }
}
