#if canImport(Glibc)
import Glibc
#endif

/// What a received descriptor really is, from the kernel's own name for it.
public enum DescriptorCheck {
    /// The name the kernel gives a uffd in `/proc/self/fd`.
    public static let userfaultfdLink = "anon_inode:[userfaultfd]"

    /// `readlink /proc/self/fd/N`, or nil when the descriptor is not open.
    public static func kernelName(of descriptor: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/\(descriptor)", &buffer, buffer.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Why `descriptor` cannot be used as an inherited, connected stream socket (`--ps-socket`), or nil when it can.
    public static func inheritedStreamSocketProblem(_ descriptor: Int32) -> String? {
        guard descriptor >= 0, fcntl(descriptor, F_GETFD) >= 0 else { return "not an open descriptor of this process" }
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == Int32(SOCK_STREAM.rawValue) else {
            return "not a stream socket"
        }
        return nil
    }

    /// True when `descriptor` is a userfaultfd.
    public static func isUserfaultfd(_ descriptor: Int32) -> Bool {
        kernelName(of: descriptor) == userfaultfdLink
    }
}
