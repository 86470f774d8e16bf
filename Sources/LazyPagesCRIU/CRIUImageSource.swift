import CRIUImages
import Foundation
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
///
/// A task its core image says is dead (a zombie) has no memory images and gets none. A task without a core image
/// whose memory images are missing can still be a zombie the restorer announces with a negative pid: its error is
/// kept and raised only if the restorer sends a uffd for it. Every other missing or bad image fails here.
public final class CRIUImageSource: @unchecked Sendable {
    public let images: ImageSet
    /// Where the LAZY pages come from: with ``LazyPageSource/pageServer`` every one is the page server's and no
    /// pages file is opened.
    public let lazyPages: LazyPageSource
    private var processes: [Int32: ProcessImage] = [:]
    /// Tasks whose core image says they are dead.
    public private(set) var deadTasks: Set<Int32> = []
    /// Tasks without a core image whose memory images are missing, with the error naming the file.
    private var withoutMemoryImages: [Int32: ImageError] = [:]
    private var files: [String: MappedFile] = [:]

    /// Reads and validates `directory`. With `lazyPages` ``LazyPageSource/pageServer`` (`--page-server`) every LAZY
    /// page comes from the page server; otherwise every lazy page must be in a local pages file.
    public init(directory: String, lazyPages: LazyPageSource = .images) throws {
        images = try ImageSet(directory: directory)
        self.lazyPages = lazyPages
        for task in images.tasks {
            let pid = Int32(bitPattern: task.pid)
            let state = try images.state(ofTask: pid)
            if let state, !state.hasMemory {
                deadTasks.insert(pid)
                continue
            }
            let image: ProcessImage
            do {
                image = try images.process(pid: pid, lazyPages: lazyPages)
            } catch {
                // (A `catch ... where` on this typed error crashes Swift 6.3.1's SILGen.)
                guard state == nil, Self.isMissingMemoryImage(error, pid: pid, in: images) else { throw error }
                withoutMemoryImages[pid] = error
                continue
            }
            for run in image.lazyRuns {
                switch run.data {
                case .file(let path, let offset):
                    let file = try mapped(path)
                    let end = offset + UInt64(run.pageCount * basePageSize)
                    guard end <= UInt64(file.size) else {
                        throw ImageError(file: path, problem: "page data at offset \(offset) runs past the end of the file (\(file.size) bytes)")
                    }
                case .remote:
                    guard lazyPages == .pageServer else {
                        throw ImageError(
                            file: "\(directory)/pagemap-\(pid).img",
                            problem: "lazy pages at 0x\(String(run.address, radix: 16)) have no local data (a dump for a page server?); use --page-server")
                    }
                }
            }
            processes[pid] = image
        }
    }

    private static func isMissingMemoryImage(_ error: ImageError, pid: Int32, in images: ImageSet) -> Bool {
        error.problem == "missing file"
            && [images.directory + "/mm-\(pid).img", images.directory + "/pagemap-\(pid).img"].contains(error.file)
    }

    private func mapped(_ path: String) throws -> MappedFile {
        if let file = files[path] { return file }
        let file = try MappedFile(path: path)
        files[path] = file
        return file
    }

    /// Populates the page tables of every pages file on a thread of its own (`MappedFile.populate`), while
    /// `criu restore` runs and the fill starts: the loop's copies then take no page faults on the source, and pages
    /// not in the page cache are read ahead. The thread holds the mappings until it is done.
    public func populateInBackground() {
        let mappings = Array(files.values)
        guard !mappings.isEmpty else { return }
        let thread = Thread {
            for file in mappings { file.populate() }
        }
        thread.name = "populate"
        thread.start()
    }

    /// Image pids of the tasks in `pstree.img`.
    public var taskPids: [Int32] { images.tasks.map { Int32(bitPattern: $0.pid) } }

    /// Pages the daemon must deliver to the task `pid` (the restorer sent its uffd); an error naming the problem
    /// when the images have no such task, or no memory for it.
    public func addressSpace(forTask pid: Int32) throws(LazyPagesError) -> AddressSpace {
        guard let image = processes[pid] else {
            if deadTasks.contains(pid) {
                throw LazyPagesError("pid \(pid) is dead in \(images.corePath(pid: pid)) (a zombie, no memory), "
                    + "yet the restorer sent a uffd for it")
            }
            if let missing = withoutMemoryImages[pid] {
                throw LazyPagesError("cannot serve pid \(pid): \(missing)")
            }
            throw LazyPagesError("pid \(pid) is not a task of the images in \(images.directory) (pstree.img)")
        }
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
