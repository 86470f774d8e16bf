import LinuxSupport

/// A run of pages a process still expects from the image: where it lives now (runtime address), where it lived at
/// dump time (the address a page server knows it by), where its bytes are, and which of its pages are still to
/// deliver.
/// `@unchecked Sendable`: `data` points into a read-only mapping that outlives every extent made from it.
public struct LazyExtent: @unchecked Sendable {
    /// Runtime address of the first page (moves with `mremap`).
    public var start: UInt64
    /// Dump-time address of the first page (never changes; what `PS_IOV_GET` asks for).
    public var dumpAddress: UInt64
    /// The bytes of the first page in a mapped page file, or nil when only a remote source has them.
    public var data: UnsafeRawPointer?
    /// Pages still to deliver.
    public var pending: PageBitmap
    /// The size of one page of this extent: 4096, or a huge page size for hugetlbfs memory.
    public let pageSize: Int

    public init(start: UInt64, dumpAddress: UInt64, data: UnsafeRawPointer?, pageCount: Int,
                pageSize: Int = basePageSize) {
        precondition(pageSize >= basePageSize && pageSize & (pageSize - 1) == 0, "bad page size")
        self.start = start
        self.dumpAddress = dumpAddress
        self.data = data
        self.pending = PageBitmap(count: pageCount, filled: true)
        self.pageSize = pageSize
    }

    public var pageCount: Int { pending.count }
    public var end: UInt64 { start + UInt64(pageCount * pageSize) }

    /// Pages `[first, first + count)` as an extent of their own.
    func slice(_ first: Int, _ count: Int) -> LazyExtent {
        let offset = UInt64(first * pageSize)
        var piece = self
        piece.start = start + offset
        piece.dumpAddress = dumpAddress + offset
        piece.data = data.map { $0 + Int(offset) }
        piece.pending = pending.slice(first, count)
        return piece
    }

    /// The source bytes of page `index`, if local.
    @inline(__always)
    func source(ofPage index: Int) -> UnsafeRawPointer? {
        data.map { $0 + index * pageSize }
    }
}
