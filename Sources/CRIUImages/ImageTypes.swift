import LinuxSupport

/// `pagemap_entry.flags`: where an entry's pages are and who restores them.
public struct PagemapFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `PE_PARENT`: the pages are in the parent image set (pre-dump / `--prev-images-dir`, the `parent` link).
    /// `in_parent = true` in an image is folded into this flag.
    public static let parent = PagemapFlags(rawValue: 1)
    /// `PE_LAZY`: the lazy-pages daemon delivers these pages on demand; `criu restore` leaves them missing.
    public static let lazy = PagemapFlags(rawValue: 2)
    /// `PE_PRESENT`: the pages are in this image set's `pages-<id>.img`.
    public static let present = PagemapFlags(rawValue: 4)
}

/// One mapping of the dumped address space (`vma_entry` in `mm-<pid>.img`), `[start, end)`.
public struct VMA: Sendable, Hashable {
    /// First address of the mapping (page aligned).
    public var start: UInt64
    /// One past the last address of the mapping (page aligned).
    public var end: UInt64
    /// `PROT_*` bits.
    public var prot: UInt32
    /// `MAP_*` bits.
    public var flags: UInt32
    /// CRIU's `VMA_*` status bits (e.g. `VMA_AREA_REGULAR`, `VMA_ANON_PRIVATE`).
    public var status: UInt32

    public init(start: UInt64, end: UInt64, prot: UInt32, flags: UInt32, status: UInt32) {
        self.start = start
        self.end = end
        self.prot = prot
        self.flags = flags
        self.status = status
    }

    /// Number of pages the mapping spans.
    public var pageCount: UInt64 { (end &- start) / UInt64(basePageSize) }

    /// CRIU's `VMA_AREA_GUARD` status bit: the entry is no mapping but a range of `madvise(MADV_GUARD_INSTALL)`
    /// guard pages inside one. CRIU 4.2 appends these entries after the real VMAs of `mm-<pid>.img` (so they are
    /// out of order and overlap them); they have no pages, and `criu restore` installs the guards again.
    public static let guardStatus: UInt32 = 1 << 16

    /// Whether `address` lies in `[start, end)`.
    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
}

/// One entry of `pagemap-<pid>.img` as read: a run of `pageCount` pages at `vaddr`.
public struct PagemapEntry: Sendable, Hashable {
    /// Dump-time address of the first page.
    public var vaddr: UInt64
    /// `nr_pages` when the image has it, else `compat_nr_pages`.
    public var pageCount: UInt64
    /// The entry's flags, with `in_parent = true` folded into ``PagemapFlags/parent`` and a missing `flags`
    /// field read as ``PagemapFlags/present`` (as CRIU does).
    public var flags: PagemapFlags

    public init(vaddr: UInt64, pageCount: UInt64, flags: PagemapFlags) {
        self.vaddr = vaddr
        self.pageCount = pageCount
        self.flags = flags
    }

    /// One past the entry's last byte.
    public var end: UInt64 { vaddr &+ pageCount &* UInt64(basePageSize) }
}

/// Where the bytes of a run of pages come from.
public enum PageData: Sendable, Hashable {
    /// The bytes live in this `pages-<id>.img` at this byte offset (possibly a parent image set's file).
    case file(path: String, offset: UInt64)
    /// `LAZY` without `PRESENT`: only a page server has the bytes (`criu dump --lazy-pages`).
    case remote
}

/// A run of pages the lazy-pages daemon must deliver; always inside exactly one VMA.
public struct LazyRun: Sendable, Hashable {
    /// Dump-time address of the first page.
    public var address: UInt64
    /// Number of pages in the run (at least 1).
    public var pageCount: Int
    /// Where the run's bytes are; for `.file`, page `k` of the run is at `offset + k * basePageSize`.
    public var data: PageData

    public init(address: UInt64, pageCount: Int, data: PageData) {
        self.address = address
        self.pageCount = pageCount
        self.data = data
    }

    /// One past the run's last byte.
    public var end: UInt64 { address &+ UInt64(pageCount) &* UInt64(basePageSize) }

    /// Whether `address` lies in the run.
    public func contains(_ address: UInt64) -> Bool { address >= self.address && address < end }
}

/// One task of the dumped tree (`pstree_entry` in `pstree.img`). Pids are the virtual pids that name the
/// task's `mm-<pid>.img` and `pagemap-<pid>.img`.
public struct TaskEntry: Sendable, Hashable {
    public var pid: UInt32
    public var ppid: UInt32
    public var pgid: UInt32
    public var sid: UInt32
    /// Thread ids of the task (the main thread's equals `pid`).
    public var threads: [UInt32]

    public init(pid: UInt32, ppid: UInt32, pgid: UInt32, sid: UInt32, threads: [UInt32]) {
        self.pid = pid
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
        self.threads = threads
    }
}

/// A task's state as its `core-<pid>.img` records it (`task_core_entry.task_state`, compel's values). CRIU dumps a
/// zombie as ``dead`` and writes no `mm-`/`pagemap-` images for it; on restore it announces it to the lazy-pages
/// daemon as a negative pid, without a uffd.
public enum TaskState: UInt32, Sendable, Hashable {
    case alive = 1
    case dead = 2
    case stopped = 3
    case zombie = 6

    /// Whether the task has memory (and so memory images): CRIU's `task_alive()`.
    public var hasMemory: Bool { self == .alive || self == .stopped }
}
