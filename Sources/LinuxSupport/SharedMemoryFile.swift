import CLinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// An anonymous shared memory file (`memfd_create`), mapped read-write for as long as this object lives. What is
/// written through `base` is in the file at once: another process holding the descriptor (a child that inherited
/// it, the guardian sharing our descriptor table) sees it, also after this process was killed. The file is sparse:
/// only pages written to take memory.
public final class SharedMemoryFile: @unchecked Sendable {
    public let descriptor: Int32
    public let size: Int
    public let base: UnsafeMutableRawPointer
    private let ownsDescriptor: Bool

    /// Creates a file of `size` bytes (close-on-exec), named `name` in `/proc/PID/fd` (`memfd:NAME`).
    public init(name: String, size: Int) throws(SystemCallError) {
        let fd = CLinuxSupport_memfd_create(name, 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw SystemCallError("memfd_create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = SystemCallError("ftruncate(memfd, \(size))")
            Glibc.close(fd)
            throw error
        }
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            let error = SystemCallError("mmap(memfd, \(size))")
            Glibc.close(fd)
            throw error
        }
        base = mapped
        descriptor = fd
        self.size = size
        ownsDescriptor = true
    }

    /// Maps an existing memory file (inherited, or handed back by a service manager) whole. The descriptor stays
    /// the caller's unless `taking`: then it is closed with this object.
    public init(mapping fd: Int32, taking: Bool) throws(SystemCallError) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError("fstat(\(fd))") }
        guard info.st_size > 0 else { throw SystemCallError("mapping an empty memory file (descriptor \(fd))", errno: EINVAL) }
        size = Int(info.st_size)
        base = try Self.map(fd, size: size)
        descriptor = fd
        ownsDescriptor = taking
    }

    private static func map(_ fd: Int32, size: Int) throws(SystemCallError) -> UnsafeMutableRawPointer {
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else { throw SystemCallError("mmap(memfd, \(size))") }
        return mapped
    }

    deinit {
        munmap(base, size)
        if ownsDescriptor { Glibc.close(descriptor) }
    }
}
