import Foundation
import LinuxSupport

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Fills a `sockaddr_un` with `bytes` (a path, or an abstract name starting with NUL) and calls `body`.
func withUnixAddress<R>(_ bytes: [UInt8], abstract: Bool, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + (abstract ? [] : [0])) }
    let length = MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
    }
}

/// A datagram socket bound where systemd would bind its notify socket; `address` is what NOTIFY_SOCKET holds.
final class NotifySocket {
    let descriptor: Int32
    let address: String

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address = path
        guard withUnixAddress(Array(path.utf8), abstract: false, { bind(descriptor, $0, $1) }) == 0 else {
            throw TestFailure("bind \(path): errno \(errno)")
        }
    }

    init(abstractName: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address = "@" + abstractName
        guard withUnixAddress([0] + Array(abstractName.utf8), abstract: true, { bind(descriptor, $0, $1) }) == 0 else {
            throw TestFailure("bind @\(abstractName): errno \(errno)")
        }
    }

    deinit { close(descriptor) }

    /// The next datagram (waiting at most 30 s, a safety net).
    func receive() throws -> String {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 30_000) == 1 else { throw TestFailure("no notification within 30 s") }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw TestFailure("recv: errno \(errno)") }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    /// The next datagram and the descriptors that came with it (`SCM_RIGHTS`, at most 8).
    func receiveWithDescriptors() throws -> (text: String, descriptors: [Int32]) {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 30_000) == 1 else { throw TestFailure("no notification within 30 s") }
        let received = try DescriptorPassing.receive(socket: descriptor, maxBytes: 4096, maxDescriptors: 8)
        return (String(decoding: received.bytes, as: UTF8.self), received.descriptors)
    }
}

/// A listening unix stream socket bound at `path`, as systemd opens a `ListenStream=` socket.
func listeningSocket(at path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard withUnixAddress(Array(path.utf8), abstract: false, { bind(fd, $0, $1) }) == 0, listen(fd, 4) == 0 else {
        let e = errno
        close(fd)
        throw TestFailure("bind/listen \(path): errno \(e)")
    }
    return fd
}

/// Connects to the stream socket at `path` and reads until the peer closes.
func connectAndRead(_ path: String) throws -> String {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    guard withUnixAddress(Array(path.utf8), abstract: false, { connect(fd, $0, $1) }) == 0 else {
        throw TestFailure("connect \(path): errno \(errno)")
    }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(fd, raw.baseAddress, raw.count) } }
        if n <= 0 { break }
        bytes += chunk[..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
