#if canImport(Glibc)
import Glibc
#endif

/// Whether some process listens on the unix socket file with this device and inode number — asked of the kernel's
/// socket table (`NETLINK_SOCK_DIAG`, `UDIAG_SHOW_VFS`) without connecting, so a live socket of someone else's
/// restore is never disturbed by the question. Where sock_diag is unavailable, a connect() decides (refused: stale).
enum ListeningSockets {
    static func isListening(device: dev_t, inode: ino_t, connectPath: String) -> Bool {
        if let listening = askKernel(device: device, inode: inode) { return listening }
        return connects(to: connectPath)
    }

    /// nil when the kernel cannot be asked.
    private static func askKernel(device: dev_t, inode: ino_t) -> Bool? {
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4 /* NETLINK_SOCK_DIAG */)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // nlmsghdr (16 bytes) + unix_diag_req (24 bytes): every listening AF_UNIX socket, with its file's dev/ino.
        var request = [UInt8]()
        func put32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { request += $0 } }
        func put16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { request += $0 } }
        put32(40); put16(20 /* SOCK_DIAG_BY_FAMILY */); put16(0x301 /* NLM_F_REQUEST | NLM_F_DUMP */)
        put32(1); put32(0)
        request += [UInt8(AF_UNIX), 0, 0, 0]
        put32(1 << 10 /* TCP_LISTEN */); put32(0); put32(0x2 /* UDIAG_SHOW_VFS */); put32(~0); put32(~0)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
        // The kernel's encoding of the device number (MAJOR << 20 | MINOR), from the stat one.
        let major = UInt32(truncatingIfNeeded: ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff))
        let minor = UInt32(truncatingIfNeeded: (device & 0xff) | ((device >> 12) & ~0xff))
        let wantedDevice = major << 20 | minor
        let wantedInode = UInt32(truncatingIfNeeded: inode)
        var buffer = [UInt8](repeating: 0, count: 32768)
        var found = false
        while true {
            let n = buffer.withUnsafeMutableBytes { raw in retryingOnInterrupt { recv(fd, raw.baseAddress, raw.count, 0) } }
            guard n > 0 else { return nil }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(buffer.load32(offset))
                let type = buffer.load16(offset + 4)
                guard length >= 16, offset + length <= n else { return nil }
                if type == 3 /* NLMSG_DONE */ { return found }
                if type == 2 /* NLMSG_ERROR */ { return nil }
                // unix_diag_msg (16 bytes), then attributes.
                var attribute = offset + 16 + 16
                while attribute + 4 <= offset + length {
                    let attributeLength = Int(buffer.load16(attribute))
                    guard attributeLength >= 4 else { break }
                    if buffer.load16(attribute + 2) == 1 /* UNIX_DIAG_VFS */, attributeLength >= 12,
                       buffer.load32(attribute + 4) == wantedInode, buffer.load32(attribute + 8) == wantedDevice
                    {
                        found = true
                    }
                    attribute += (attributeLength + 3) & ~3
                }
                offset += (length + 3) & ~3
            }
        }
    }

    /// The fallback: a non-blocking connect that is refused means nobody listens.
    private static func connects(to path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        let result = withSocketAddress(path) { connect(fd, $0, $1) } ?? -1
        return result == 0 || errno == EAGAIN || errno == EINPROGRESS
    }
}

extension Array where Element == UInt8 {
    fileprivate func load32(_ offset: Int) -> UInt32 {
        UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16 | UInt32(self[offset + 3]) << 24
    }
    fileprivate func load16(_ offset: Int) -> UInt16 { UInt16(self[offset]) | UInt16(self[offset + 1]) << 8 }
}
