import Glibc

/// A page-aligned buffer in the test process holding a recognizable pattern: the source of `UFFDIO_COPY`.
final class PagePattern {
    let pointer: UnsafeMutableRawPointer
    let byteCount: Int
    let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// `pages` pages; every byte depends on `seed`, the page and the offset, so no two pages or seeds match.
    init(pages: Int, seed: UInt8) {
        byteCount = pages * pageSize
        pointer = .allocate(byteCount: byteCount, alignment: pageSize)
        for i in 0..<byteCount {
            let page = i / pageSize
            pointer.storeBytes(
                of: UInt8(truncatingIfNeeded: Int(seed) &* 131 &+ page &* 17 &+ (i % pageSize) &* 7 &+ (i >> 8)),
                toByteOffset: i, as: UInt8.self)
        }
    }

    deinit { pointer.deallocate() }

    /// The start of page `index` of the pattern.
    func page(_ index: Int) -> UnsafeRawPointer { UnsafeRawPointer(pointer + index * pageSize) }

    /// The bytes of page `index`.
    func bytes(ofPage index: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: page(index), count: pageSize))
    }

    /// A page of zeros.
    var zeroPage: [UInt8] { [UInt8](repeating: 0, count: pageSize) }
}
