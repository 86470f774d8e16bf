import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A socket the test could not set up, with the call and errno.
public struct SocketSetupError: Error, CustomStringConvertible {
    public let description: String
}

/// Binds `fd` (an AF_INET stream socket) to a kernel-chosen port on 127.0.0.1, listening with `backlog` unless nil,
/// and returns the port; nil (with `errno`) on failure.
public func bindLoopback(_ fd: Int32, listenBacklog backlog: Int32? = nil) -> UInt16? {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && (backlog.map { listen(fd, $0) == 0 } ?? true)
                && getsockname(fd, $0, &length) == 0
        }
    }
    return ok ? UInt16(bigEndian: address.sin_port) : nil
}

/// A TCP port nobody listens on right now on loopback (bound to 0, read back, released), for peers that cannot
/// pick their own and report it.
public func freeLoopbackPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SocketSetupError(description: "socket: errno \(errno)") }
    defer { close(fd) }
    guard let port = bindLoopback(fd) else { throw SocketSetupError(description: "bind: errno \(errno)") }
    return port
}

/// A unix socket file at `path` that nothing listens on (bound, then closed): what a crashed daemon leaves behind.
public func makeStaleUnixSocket(at path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SocketSetupError(description: "socket: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0 else { throw SocketSetupError(description: "cannot make a stale socket at \(path): errno \(errno)") }
}
