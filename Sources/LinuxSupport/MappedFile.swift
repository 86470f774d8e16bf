#if canImport(Glibc)
import Glibc
#endif

/// A file mapped read-only into our address space for as long as this object lives. Page sources copy straight
/// from such a mapping into the restored process (`UFFDIO_COPY` reads it), so page data is never copied twice.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// The file's identity when it was mapped (`st_dev`, `st_ino`): a successor daemon that maps the same path
    /// again can tell whether it is still the same file.
    public let device: UInt64
    public let inode: UInt64
    /// Start of the mapping; nil for an empty file.
    public let base: UnsafeRawPointer?

    public init(path: String) throws(SystemCallError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError("open \(path)", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError("fstat \(path)", errno: errno) }
        size = Int(info.st_size)
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        if size == 0 {
            base = nil
            return
        }
        let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else { throw SystemCallError("mmap \(path)", errno: errno) }
        base = UnsafeRawPointer(mapped)
    }

    /// Maps every page of the file into our page tables, reading from disk what is not cached
    /// (`MADV_POPULATE_READ`), in steps of `step` bytes from the start, until done or `stop()` says so. Copies out of
    /// the mapping then take no page faults on it. Returns false if the kernel refused (before Linux 5.14: EINVAL).
    @discardableResult
    public func populate(step: Int = 8 << 20, stop: () -> Bool = { false }) -> Bool {
        guard let base else { return true }
        var offset = 0
        while offset < size && !stop() {
            let length = min(step, size - offset)
            if madvise(UnsafeMutableRawPointer(mutating: base + offset), length, 22 /* MADV_POPULATE_READ */) != 0 {
                return false
            }
            offset += length
        }
        return true
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }
}
