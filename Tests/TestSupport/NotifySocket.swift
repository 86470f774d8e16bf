import Foundation
import LinuxSupport

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Fills a `sockaddr_un` with `bytes` (a path, or an abstract name starting with NUL) and calls `body`.
public func withUnixAddress<R>(_ bytes: [UInt8], abstract: Bool, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + (abstract ? [] : [0])) }
    let length = MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
    }
}

/// A datagram socket bound where systemd would bind its notify socket; `address` is what NOTIFY_SOCKET holds.
public final class NotifySocket {
    public let descriptor: Int32
    public let address: String

    public init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address = path
        guard withUnixAddress(Array(path.utf8), abstract: false, { bind(descriptor, $0, $1) }) == 0 else {
            throw TestFailure("bind \(path): errno \(errno)")
        }
    }

    public init(abstractName: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address = "@" + abstractName
        guard withUnixAddress([0] + Array(abstractName.utf8), abstract: true, { bind(descriptor, $0, $1) }) == 0 else {
            throw TestFailure("bind @\(abstractName): errno \(errno)")
        }
    }

    deinit { close(descriptor) }

    /// The next datagram (waiting at most 30 s, a safety net).
    public func receive() throws -> String {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 30_000) == 1 else { throw TestFailure("no notification within 30 s") }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw TestFailure("recv: errno \(errno)") }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    /// The next datagram and the descriptors that came with it (`SCM_RIGHTS`, at most 8).
    public func receiveWithDescriptors() throws -> (text: String, descriptors: [Int32]) {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 30_000) == 1 else { throw TestFailure("no notification within 30 s") }
        let received = try DescriptorPassing.receive(socket: descriptor, maxBytes: 4096, maxDescriptors: 8)
        return (String(decoding: received.bytes, as: UTF8.self), received.descriptors)
    }
}
