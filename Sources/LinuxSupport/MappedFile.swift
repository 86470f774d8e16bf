#if canImport(Glibc)
import Glibc
#endif

/// A file mapped read-only into our address space for as long as this object lives. Page sources copy straight
/// from such a mapping into the restored process (`UFFDIO_COPY` reads it), so page data is never copied twice.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// Start of the mapping; nil for an empty file.
    public let base: UnsafeRawPointer?

    public init(path: String) throws(SocketError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SocketError("open \(path)", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SocketError("fstat \(path)", errno: errno) }
        size = Int(info.st_size)
        if size == 0 {
            base = nil
            return
        }
        let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else { throw SocketError("mmap \(path)", errno: errno) }
        base = UnsafeRawPointer(mapped)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }
}
