#if canImport(Glibc)
import Glibc
import LinuxSupport
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SwiftProtobuf

/// One pagemap entry to write: `pageCount` pages at `address` with `flags`, and (for ``PagemapFlags/present``
/// runs) how to fill each page of `pages-<id>.img`.
public struct RunSpec: Sendable {
    public var address: UInt64
    public var pageCount: Int
    public var flags: PagemapFlags
    /// Writes the dump-time contents of the page at `pageAddress` into `page` (4 KiB, zeroed beforehand).
    /// Only called for ``PagemapFlags/present`` runs.
    public var fill: @Sendable (_ pageAddress: UInt64, _ page: UnsafeMutableRawBufferPointer) -> Void

    public init(
        address: UInt64, pageCount: Int, flags: PagemapFlags,
        fill: @escaping @Sendable (_ pageAddress: UInt64, _ page: UnsafeMutableRawBufferPointer) -> Void = { _, _ in }
    ) {
        self.address = address
        self.pageCount = pageCount
        self.flags = flags
        self.fill = fill
    }
}

/// One task to write: its pstree entry, its state (`core-<pid>.img`), its VMAs (`mm-<pid>.img`) and its pagemap
/// runs. A task that does not have memory (``TaskState/dead``, as CRIU dumps a zombie) gets no memory images.
public struct ProcessSpec: Sendable {
    public var pid: UInt32
    /// Parent pid in the tree (0 for the root).
    public var ppid: UInt32
    public var vmas: [VMA]
    /// Written in the given order, unchecked (so tests can write lying images).
    public var runs: [RunSpec]
    public var state: TaskState

    public init(pid: UInt32, ppid: UInt32, vmas: [VMA], runs: [RunSpec], state: TaskState = .alive) {
        self.pid = pid
        self.ppid = ppid
        self.vmas = vmas
        self.runs = runs
        self.state = state
    }

    /// A zombie child of `ppid`, as CRIU dumps one: state ``TaskState/dead``, no memory.
    public static func zombie(pid: UInt32, ppid: UInt32) -> ProcessSpec {
        ProcessSpec(pid: pid, ppid: ppid, vmas: [], runs: [], state: .dead)
    }
}

/// Writes CRIU image sets of any size and layout, the way CRIU 4.2 lays them out: `inventory.img`,
/// `pstree.img`, and per process `core-<pid>.img` (only its task state), then for a task with memory `mm-<pid>.img`,
/// `pagemap-<pid>.img` and `pages-<id>.img` (pages ids 1, 2, … in process order). Page data is streamed through a 1 MiB buffer; nothing is checked, so tests can write
/// corrupt or lying images on purpose.
public enum ImageWriter {
    /// Which page-count field pagemap entries carry.
    public enum PageCountEncoding: Sendable {
        /// CRIU ≥ 3.x: `nr_pages`, with the (required) `compat_nr_pages` written as 0.
        case nrPages
        /// Old images: only `compat_nr_pages` (counts must fit in 32 bits).
        case compatNrPages
    }

    /// Writes an image set into `directory` (created if missing; existing image files are replaced).
    /// With `parentDirectory`, also a `parent` symlink to it (a relative target is relative to `directory`,
    /// as CRIU's `--prev-images-dir` link is).
    public static func write(directory: String, processes: [ProcessSpec], parentDirectory: String? = nil) throws {
        try write(directory: directory, processes: processes, parentDirectory: parentDirectory, pageCounts: .nrPages)
    }

    /// ``write(directory:processes:parentDirectory:)`` choosing the page-count field of pagemap entries.
    public static func write(
        directory: String, processes: [ProcessSpec], parentDirectory: String?, pageCounts: PageCountEncoding
    ) throws {
        try makeDirectories(directory)

        var inventory = Criu_inventory_entry()
        inventory.imgVersion = 2
        inventory.fdinfoPerID = true
        try writeImage(path: "\(directory)/inventory.img", kind: .inventory, messages: [inventory])

        let root = processes.first?.pid ?? 0
        let tasks = processes.map { spec in
            var entry = Criu_pstree_entry()
            entry.pid = spec.pid
            entry.ppid = spec.ppid
            entry.pgid = root
            entry.sid = root
            entry.threads = [spec.pid]
            return entry
        }
        try writeImage(path: "\(directory)/pstree.img", kind: .pstree, messages: tasks)

        for (index, spec) in processes.enumerated() {
            try writeCore(path: "\(directory)/core-\(spec.pid).img", state: spec.state)
            guard spec.state.hasMemory else { continue }
            let pagesID = UInt32(index + 1)
            try writeMM(path: "\(directory)/mm-\(spec.pid).img", vmas: spec.vmas)
            try writePagemap(
                path: "\(directory)/pagemap-\(spec.pid).img", pagesID: pagesID, runs: spec.runs, pageCounts: pageCounts)
            try writePages(path: "\(directory)/pages-\(pagesID).img", runs: spec.runs)
        }

        let link = "\(directory)/parent"
        if entryExists(link) { unlink(link) }
        if let parentDirectory {
            guard symlink(parentDirectory, link) == 0 else {
                throw ImageError(file: link, problem: "cannot create parent symlink: \(SystemCallError.reason(errno))")
            }
        }
    }

    private static func writeCore(path: String, state: TaskState) throws {
        var core = Criu_core_entry()
        core.mtype = 1  // X86_64 (a page monitor does not look at it)
        core.tc.taskState = state.rawValue
        try writeImage(path: path, kind: .core, messages: [core])
    }

    private static func writeMM(path: String, vmas: [VMA]) throws {
        var mm = Criu_mm_entry()
        // CRIU requires fields 1-12; a page monitor does not care about their values.
        mm.mmStartCode = 0
        mm.mmEndCode = 0
        mm.mmStartData = 0
        mm.mmEndData = 0
        mm.mmStartStack = 0
        mm.mmStartBrk = 0
        mm.mmBrk = 0
        mm.mmArgStart = 0
        mm.mmArgEnd = 0
        mm.mmEnvStart = 0
        mm.mmEnvEnd = 0
        mm.exeFileID = 0
        mm.vmas = vmas.map { vma in
            var entry = Criu_vma_entry()
            entry.start = vma.start
            entry.end = vma.end
            entry.pgoff = 0
            entry.shmid = 0
            entry.prot = vma.prot
            entry.flags = vma.flags
            entry.status = vma.status
            entry.fd = -1
            return entry
        }
        try writeImage(path: path, kind: .mm, messages: [mm])
    }

    private static func writePagemap(
        path: String, pagesID: UInt32, runs: [RunSpec], pageCounts: PageCountEncoding
    ) throws {
        var image = header(.pagemap)
        var head = Criu_pagemap_head()
        head.pagesID = pagesID
        try appendMessage(head, to: &image)
        for run in runs {
            var entry = Criu_pagemap_entry()
            entry.vaddr = run.address
            entry.flags = run.flags.rawValue
            switch pageCounts {
            case .nrPages:
                entry.compatNrPages = 0
                entry.nrPages = UInt64(max(run.pageCount, 0))
            case .compatNrPages:
                entry.compatNrPages = UInt32(clamping: run.pageCount)
            }
            try appendMessage(entry, to: &image)
        }
        try writeFile(path: path, bytes: image)
    }

    /// Streams the pages of the present runs, in order, through a 1 MiB buffer.
    private static func writePages(path: String, runs: [RunSpec]) throws {
        let fd = try createFile(path)
        defer { close(fd) }
        let page = basePageSize
        let bufferPages = 256
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: page * bufferPages, alignment: page)
        defer { buffer.deallocate() }
        var used = 0
        for run in runs where run.flags.contains(.present) {
            for index in 0 ..< max(run.pageCount, 0) {
                let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[used * page ..< (used + 1) * page])
                slot.initializeMemory(as: UInt8.self, repeating: 0)
                run.fill(run.address &+ UInt64(index) &* UInt64(page), slot)
                used += 1
                if used == bufferPages {
                    try writeOrSkip(fd: fd, path: path, UnsafeRawBufferPointer(buffer))
                    used = 0
                }
            }
        }
        if used > 0 {
            try writeOrSkip(fd: fd, path: path, UnsafeRawBufferPointer(rebasing: buffer[0 ..< used * page]))
        }
        // Holes at the end: the size comes from the offset reached.
        let end = lseek(fd, 0, SEEK_CUR)
        guard end >= 0, ftruncate(fd, end) == 0 else {
            throw ImageError(file: path, problem: "cannot set the size: \(SystemCallError.reason(errno))")
        }
    }

    /// Writes `buffer`, or leaves a hole when it is all zeros (so images of zero pages stay sparse on disk; they
    /// read back the same).
    private static func writeOrSkip(fd: Int32, path: String, _ buffer: UnsafeRawBufferPointer) throws(ImageError) {
        let words = buffer.count / 8
        let allZero = buffer.count % 8 == 0
            && (0 ..< words).allSatisfy { buffer.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
        guard allZero else { return try writeAll(fd: fd, path: path, buffer) }
        guard lseek(fd, off_t(buffer.count), SEEK_CUR) >= 0 else {
            throw ImageError(file: path, problem: "seek failed: \(SystemCallError.reason(errno))")
        }
    }

    // MARK: - Framing

    static func header(_ kind: ImageKind) -> [UInt8] {
        var bytes: [UInt8] = []
        for word in kind.header { appendLittleEndian(word, to: &bytes) }
        return bytes
    }

    private static func appendLittleEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    static func appendMessage<M: SwiftProtobuf.Message>(_ message: M, to bytes: inout [UInt8]) throws {
        let payload: [UInt8] = try message.serializedBytes()
        appendLittleEndian(UInt32(payload.count), to: &bytes)
        bytes.append(contentsOf: payload)
    }

    private static func writeImage<M: SwiftProtobuf.Message>(path: String, kind: ImageKind, messages: [M]) throws {
        var bytes = header(kind)
        for message in messages { try appendMessage(message, to: &bytes) }
        try writeFile(path: path, bytes: bytes)
    }

    // MARK: - Files

    static func makeDirectories(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component + "/"
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw ImageError(file: prefix, problem: "cannot create directory: \(SystemCallError.reason(errno))")
            }
        }
    }

    static func createFile(_ path: String) throws(ImageError) -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ImageError(file: path, problem: "cannot create: \(SystemCallError.reason(errno))") }
        return fd
    }

    static func writeFile(path: String, bytes: [UInt8]) throws {
        let fd = try createFile(path)
        defer { close(fd) }
        // (Typed throws in this closure crashes Swift 6.3.1's IRGen; an untyped closure is fine.)
        try bytes.withUnsafeBytes { buffer in try writeAll(fd: fd, path: path, buffer) }
    }

    static func writeAll(fd: Int32, path: String, _ buffer: UnsafeRawBufferPointer) throws(ImageError) {
        var done = 0
        while done < buffer.count {
            let n = retryingOnInterrupt { systemWrite(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done) }
            if n < 0 {
                throw ImageError(file: path, problem: "write failed: \(SystemCallError.reason(errno))")
            }
            done += n
        }
    }
}

/// `write(2)` (the name is shadowed inside ``ImageWriter``).
private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int {
    write(fd, buffer, count)
}
