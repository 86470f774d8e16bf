import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The restore side of `lazy-pages.socket`, as `criu restore --lazy-pages` speaks it: one connection; per task a
/// native-endian `int32` virtual pid, then (pid > 0) one byte `\0` carrying the task's uffd by `SCM_RIGHTS`;
/// finally the word `0x52535446` ("RSTF") and close.
final class LazyPagesConnection {
    static let socketName = "lazy-pages.socket"
    /// `RSTF` as CRIU writes it: a native-endian u32 (on the wire `46 54 53 52` on little-endian machines).
    static let restoreFinished: UInt32 = 0x5253_5446

    private var socket: Int32

    /// Connects to `<workDirectory>/lazy-pages.socket`; fails like CRIU when nobody listens.
    init(workDirectory: String) throws(SimulationError) {
        let path = workDirectory + "/" + Self.socketName
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw SimulationError("connect to lazy-pages.socket failed: path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
            raw[path.utf8.count] = 0
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SimulationError("socket: \(SystemCallError.reason(errno))") }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            _ = Glibc.close(fd)
            throw SimulationError("connect to lazy-pages.socket failed: \(path): \(SystemCallError.reason(e))")
        }
        socket = fd
    }

    deinit { close() }

    /// Announces a live task and hands over its uffd (the caller keeps and closes its own copy).
    func sendTask(virtualPid: Int32, uffd: Int32) throws(SimulationError) {
        try sendWord(UInt32(bitPattern: virtualPid), what: "pid \(virtualPid)")
        do {
            try DescriptorPassing.send(socket: socket, bytes: [0], descriptors: [uffd])
        } catch {
            throw SimulationError("sending the uffd of task \(virtualPid) to lazy-pages.socket: \(error)")
        }
    }

    /// Announces a zombie: its pid negated, no descriptor.
    func sendZombie(virtualPid: Int32) throws(SimulationError) {
        try sendWord(UInt32(bitPattern: -virtualPid), what: "zombie \(virtualPid)")
    }

    /// Sends "RSTF": every task is restored.
    func sendRestoreFinished() throws(SimulationError) {
        try sendWord(Self.restoreFinished, what: "RSTF")
    }

    func close() {
        if socket >= 0 { _ = Glibc.close(socket) }
        socket = -1
    }

    private func sendWord(_ word: UInt32, what: String) throws(SimulationError) {
        var value = word
        let n = withUnsafeBytes(of: &value) { raw in
            var sent = 0
            while sent < 4 {
                let r = retryingOnInterrupt { send(socket, raw.baseAddress! + sent, 4 - sent, Int32(MSG_NOSIGNAL)) }
                if r <= 0 { return r }
                sent += r
            }
            return sent
        }
        guard n == 4 else {
            throw SimulationError("sending \(what) to lazy-pages.socket: \(SystemCallError.reason(errno))")
        }
    }
}
