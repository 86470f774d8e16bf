#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Sending and receiving file descriptors over a unix socket (`SCM_RIGHTS`), one message at a time.
public enum DescriptorPassing {
    /// What one `recvmsg` delivered.
    public struct Received: Sendable, Equatable {
        /// The data bytes (0 on end of file).
        public var bytes: [UInt8]
        /// Every descriptor that came with them (now ours to close).
        public var descriptors: [Int32]
        /// True when the kernel had to drop descriptors or data (`MSG_CTRUNC`/`MSG_TRUNC`).
        public var truncated: Bool
    }

    /// Sends `bytes` (at least one byte: Linux drops ancillary data on an empty message) with `descriptors`.
    public static func send(socket: Int32, bytes: [UInt8], descriptors: [Int32]) throws(SystemCallError) {
        precondition(!bytes.isEmpty, "SCM_RIGHTS needs at least one data byte")
        var data = bytes
        let fdBytes = descriptors.count * MemoryLayout<Int32>.size
        let controlLength = descriptors.isEmpty ? 0 : cmsgSpace(fdBytes)
        var control = [UInt8](repeating: 0, count: max(controlLength, 1))
        let sent: Int = data.withUnsafeMutableBytes { dataBuffer in
            control.withUnsafeMutableBytes { controlBuffer in
                var iov = iovec(iov_base: dataBuffer.baseAddress, iov_len: dataBuffer.count)
                return withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    if controlLength > 0 {
                        message.msg_control = controlBuffer.baseAddress
                        message.msg_controllen = controlLength
                        let header = controlBuffer.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                        header.pointee.cmsg_level = SOL_SOCKET
                        header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                        header.pointee.cmsg_len = cmsgLength(fdBytes)
                        let payload = controlBuffer.baseAddress! + cmsgLength(0)
                        for (i, fd) in descriptors.enumerated() {
                            payload.storeBytes(of: fd, toByteOffset: i * 4, as: Int32.self)
                        }
                    }
                    return retryingOnInterrupt { sendmsg(socket, &message, Int32(MSG_NOSIGNAL)) }
                }
            }
        }
        if sent < 0 { throw SystemCallError("sendmsg", errno: Glibc.errno) }
        if sent != bytes.count { throw SystemCallError("sendmsg (short write)", errno: EIO) }
    }

    /// Receives up to `maxBytes` bytes and up to `maxDescriptors` descriptors (received with `MSG_CMSG_CLOEXEC`).
    /// Descriptors beyond `maxDescriptors` are closed by the kernel and reported as `truncated`.
    public static func receive(socket: Int32, maxBytes: Int, maxDescriptors: Int = 4) throws(SystemCallError) -> Received {
        var data = [UInt8](repeating: 0, count: max(maxBytes, 1))
        let controlLength = cmsgSpace(maxDescriptors * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlLength)
        var flags: Int32 = 0
        var controlUsed = 0
        let received: Int = data.withUnsafeMutableBytes { dataBuffer in
            control.withUnsafeMutableBytes { controlBuffer in
                var iov = iovec(iov_base: dataBuffer.baseAddress, iov_len: maxBytes)
                return withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBuffer.baseAddress
                    message.msg_controllen = controlLength
                    let n = retryingOnInterrupt { recvmsg(socket, &message, Int32(MSG_CMSG_CLOEXEC)) }
                    if n >= 0 {
                        flags = message.msg_flags
                        controlUsed = message.msg_controllen
                    }
                    return n
                }
            }
        }
        if received < 0 { throw SystemCallError("recvmsg", errno: Glibc.errno) }
        var descriptors: [Int32] = []
        control.withUnsafeBytes { buffer in
            var offset = 0
            while offset + MemoryLayout<cmsghdr>.size <= controlUsed {
                let header = buffer.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                let length = Int(header.cmsg_len)
                guard length >= cmsgLength(0), offset + length <= controlUsed else { break }
                if header.cmsg_level == SOL_SOCKET && header.cmsg_type == Int32(SCM_RIGHTS) {
                    let count = (length - cmsgLength(0)) / MemoryLayout<Int32>.size
                    for i in 0..<count {
                        descriptors.append(
                            buffer.loadUnaligned(fromByteOffset: offset + cmsgLength(0) + i * 4, as: Int32.self))
                    }
                }
                offset += cmsgSpace(length - cmsgLength(0))
            }
        }
        let truncated = flags & Int32(MSG_CTRUNC) != 0 || flags & Int32(MSG_TRUNC) != 0
        return Received(bytes: Array(data[0..<received]), descriptors: descriptors, truncated: truncated)
    }

    private static func align(_ n: Int) -> Int {
        let a = MemoryLayout<Int>.size
        return (n + a - 1) & ~(a - 1)
    }
    static func cmsgLength(_ payload: Int) -> Int { align(MemoryLayout<cmsghdr>.size) + payload }
    static func cmsgSpace(_ payload: Int) -> Int { align(MemoryLayout<cmsghdr>.size) + align(payload) }
}
