#if canImport(Glibc)
import Glibc
#endif

/// Zeros to copy from, for page sizes that have no zero-page ioctl (hugetlbfs): a read-only private anonymous
/// mapping, which reads as the kernel's shared zero page and so costs no memory however large it is. Grown on
/// demand; used on the loop thread only.
final class ZeroSource {
    private var base: UnsafeMutableRawPointer?
    private var length = 0

    /// At least `count` zero bytes, or nil when the mapping cannot be made.
    func bytes(_ count: Int) -> UnsafeRawPointer? {
        if count > length {
            if let base { munmap(base, length) }
            base = nil
            length = 0
            guard let mapped = mmap(nil, count, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mapped != MAP_FAILED
            else { return nil }
            base = mapped
            length = count
        }
        return base.map { UnsafeRawPointer($0) }
    }

    deinit {
        if let base { munmap(base, length) }
    }
}
