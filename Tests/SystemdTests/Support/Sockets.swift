import Foundation
import LinuxSupport
import TestSupport

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
