import LinuxSupport

/// One process's picture of what it still needs from the image: a sorted list of non-overlapping extents, each with
/// a bitmap of pending pages. Cost is O(log extents) per lookup and O(extents) per layout change (mremap, madvise,
/// munmap); nothing is per page except one bit.
///
/// An address no extent covers (never dumped, or removed/unmapped since) must read as zeros.
public struct AddressSpace: Sendable {
    public private(set) var extents: [LazyExtent] = []
    /// Pages still to deliver, over all extents.
    public private(set) var pendingPages: Int = 0
    /// The size of every page of this space (4096, or the huge page size of a hugetlbfs-backed process): faults,
    /// copies and zero fills happen in these units, and `pendingPages` counts them.
    public let pageSize: Int
    /// Whether some extent holds pages at another address than at dump time (mremap), now or earlier. While false,
    /// dump addresses are runtime addresses and `extents(overlappingDump:_:)` is a binary search, not a scan.
    public private(set) var hasMovedExtents = false

    public init(pageSize: Int = basePageSize) {
        self.pageSize = pageSize
    }

    /// Builds the space from extents; they must be aligned to `pageSize`, be made of pages of that size, and must
    /// not overlap.
    public init(extents: [LazyExtent], pageSize: Int = basePageSize) {
        self.pageSize = pageSize
        self.extents = extents.sorted { $0.start < $1.start }
        pendingPages = self.extents.reduce(0) { $0 + $1.pending.setCount }
        hasMovedExtents = self.extents.contains { $0.dumpAddress != $0.start }
        for extent in self.extents {
            precondition(extent.pageSize == pageSize && extent.start % UInt64(pageSize) == 0, "misaligned extent")
        }
        for i in self.extents.indices.dropFirst() {
            precondition(self.extents[i - 1].end <= self.extents[i].start, "overlapping lazy extents")
        }
    }

    public var isComplete: Bool { pendingPages == 0 }

    /// The index of the extent containing `address`, or nil.
    @inline(__always)
    public func extentIndex(containing address: UInt64) -> Int? {
        var low = 0
        var high = extents.count
        while low < high {
            let mid = (low + high) >> 1
            if extents[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low < extents.count && extents[low].start <= address ? low : nil
    }

    /// The index of the first extent that ends after `address`, i.e. where a scan from `address` starts.
    @inline(__always)
    func firstExtent(endingAfter address: UInt64) -> Int {
        extents.partitionPoint { $0.end > address }
    }

    /// The indices of the extents that may hold dump addresses in `[dumpStart, dumpEnd)`: exactly those whose
    /// runtime range overlaps it while no extent ever moved (O(log extents)), else all of them.
    public func extents(overlappingDump dumpStart: UInt64, _ dumpEnd: UInt64) -> Range<Int> {
        guard !hasMovedExtents else { return extents.indices }
        let first = firstExtent(endingAfter: dumpStart)
        var last = first
        while last < extents.count && extents[last].start < dumpEnd { last += 1 }
        return first..<last
    }

    /// A run of pending pages: where to copy, from where.
    public struct Run: @unchecked Sendable, Equatable {
        public var address: UInt64
        public var pageCount: Int
        public var dumpAddress: UInt64
        public var data: UnsafeRawPointer?
        /// The space's page size.
        public var pageSize: Int = basePageSize
        public var length: Int { pageCount * pageSize }
    }

    /// The pending run that starts at the page containing `address`, at most `maxPages` long; nil when that page
    /// is not pending (already delivered, removed, or never in the image).
    @inline(__always)
    public func pendingRun(at address: UInt64, maxPages: Int) -> Run? {
        guard let e = extentIndex(containing: address) else { return nil }
        let extent = extents[e]
        let page = Int((address - extent.start) / UInt64(pageSize))
        guard extent.pending.isSet(page) else { return nil }
        let n = extent.pending.runLength(from: page, limit: maxPages)
        let offset = UInt64(page * pageSize)
        return Run(address: extent.start + offset, pageCount: n, dumpAddress: extent.dumpAddress + offset,
                   data: extent.source(ofPage: page), pageSize: pageSize)
    }

    /// The first pending run at or after `address` (wrapping around to the lowest address once), at most
    /// `maxPages` long.
    public func nextPendingRun(from address: UInt64, maxPages: Int) -> Run? {
        guard pendingPages > 0 else { return nil }
        let first = firstExtent(endingAfter: address)
        for pass in 0..<2 {
            let range = pass == 0 ? first..<extents.count : 0..<min(first + 1, extents.count)
            for e in range {
                let extent = extents[e]
                guard extent.pending.setCount > 0 else { continue }
                let from = pass == 0 && address > extent.start ? Int((address - extent.start) / UInt64(pageSize)) : 0
                guard let page = extent.pending.nextSet(from: from) else { continue }
                let n = extent.pending.runLength(from: page, limit: maxPages)
                let offset = UInt64(page * pageSize)
                return Run(address: extent.start + offset, pageCount: n, dumpAddress: extent.dumpAddress + offset,
                           data: extent.source(ofPage: page), pageSize: pageSize)
            }
        }
        return nil
    }

    /// Marks `[address, address + pages)` delivered (or no longer wanted). Pages outside every extent are ignored.
    /// Returns how many pending pages were cleared.
    @discardableResult
    public mutating func markDelivered(_ address: UInt64, pages: Int) -> Int {
        var cleared = 0
        let end = address + UInt64(pages * pageSize)
        var e = firstExtent(endingAfter: address)
        while e < extents.count && extents[e].start < end {
            let from = max(address, extents[e].start)
            let to = min(end, extents[e].end)
            let first = Int((from - extents[e].start) / UInt64(pageSize))
            let count = Int((to - from) / UInt64(pageSize))
            cleared += extents[e].pending.clear(first, count)
            e += 1
        }
        pendingPages -= cleared
        return cleared
    }

    /// Takes the parts of every extent inside `[start, end)` out of the space (splitting extents at the edges) and
    /// returns them, in address order.
    @discardableResult
    public mutating func carve(_ start: UInt64, _ end: UInt64) -> [LazyExtent] {
        guard start < end else { return [] }
        let first = firstExtent(endingAfter: start)
        var last = first
        while last < extents.count && extents[last].start < end { last += 1 }
        guard first < last else { return [] }
        var kept: [LazyExtent] = []
        var taken: [LazyExtent] = []
        for extent in extents[first..<last] {
            let from = max(start, extent.start)
            let to = min(end, extent.end)
            let headPages = Int((from - extent.start) / UInt64(pageSize))
            let midPages = Int((to - from) / UInt64(pageSize))
            let tailPages = extent.pageCount - headPages - midPages
            if headPages > 0 { kept.append(extent.slice(0, headPages)) }
            taken.append(extent.slice(headPages, midPages))
            if tailPages > 0 { kept.append(extent.slice(headPages + midPages, tailPages)) }
        }
        extents.replaceSubrange(first..<last, with: kept)
        pendingPages -= taken.reduce(0) { $0 + $1.pending.setCount }
        return taken
    }

    /// Inserts extents that must not overlap anything in the space (callers carve first).
    public mutating func insert(_ pieces: [LazyExtent]) {
        for piece in pieces where piece.pageCount > 0 {
            precondition(piece.pageSize == pageSize, "inserting an extent of another page size")
            let at = firstExtent(endingAfter: piece.start)
            precondition(at == extents.count || extents[at].start >= piece.end, "inserting over a live extent")
            extents.insert(piece, at: at)
            pendingPages += piece.pending.setCount
            if piece.dumpAddress != piece.start { hasMovedExtents = true }
        }
    }

    // MARK: The process changed its own memory map

    /// `mremap` moved `[from, from + length)` to `to`: pending pages move with it; whatever we tracked at the
    /// destination is gone (the kernel unmapped it).
    public mutating func remap(from: UInt64, to: UInt64, length: UInt64) {
        var moved = carve(from, from + length)
        carve(to, to + length)
        for i in moved.indices { moved[i].start = moved[i].start - from + to }
        insert(moved)
    }

    /// `madvise(MADV_DONTNEED)`: the range reads zeros from now on, never image data.
    public mutating func remove(_ start: UInt64, _ end: UInt64) { carve(start, end) }

    /// `munmap`: the range is gone.
    public mutating func unmap(_ start: UInt64, _ end: UInt64) { carve(start, end) }

    /// Drops extents with nothing pending (keeps lookups short once most pages are home).
    public mutating func compact() {
        extents.removeAll { $0.pending.setCount == 0 }
    }
}
