import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 responder for Prometheus scrapes on its own thread: `GET /metrics` gets the text exposition,
/// anything else a 404 (or 405). One request per connection; requests are bounded to 8 KiB and 5 seconds.
final class MetricsEndpoint: @unchecked Sendable {
    let host: String
    /// The port bound (the one asked for, or the kernel's choice for 0).
    let port: UInt16
    private let descriptor: Int32
    private let render: @Sendable () -> String
    private let logger: Logger

    /// Binds `host:port` (IPv4 dotted quad) and listens.
    init(host: String, port: UInt16, logger: Logger, render: @escaping @Sendable () -> String) throws {
        self.host = host
        self.render = render
        self.logger = logger
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw ServiceError("--metrics-address: \"\(host)\" is not an IPv4 address")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServiceError("socket(AF_INET): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ServiceError("cannot listen for metrics on \(host):\(port): \(reason)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.port = UInt16(bigEndian: actual.sin_port)
        descriptor = fd
    }

    func start() {
        let thread = Thread { [self] in serveForever() }
        thread.name = "lazy-pages metrics"
        thread.start()
    }

    private func serveForever() {
        while true {
            let fd = accept(descriptor, nil, nil)
            guard fd >= 0 else {
                if errno == EINTR || errno == ECONNABORTED || errno == EAGAIN { continue }
                logger.error("accept on the metrics socket failed", metadata: ["errno": "\(errno)"])
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            answer(fd)
            close(fd)
        }
    }

    private func answer(_ fd: Int32) {
        var request: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while !request.ends(containing: end) {
            guard request.count < 8192 else { return respond(fd, "431 Request Header Fields Too Large", "") }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            request += chunk[..<n]
        }
        let firstLine = String(decoding: request.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        let parts = firstLine.split(separator: " ")
        guard parts.count == 3 else { return respond(fd, "400 Bad Request", "") }
        guard parts[0] == "GET" || parts[0] == "HEAD" else { return respond(fd, "405 Method Not Allowed", "") }
        guard parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") else { return respond(fd, "404 Not Found", "") }
        respond(fd, "200 OK", render(), includeBody: parts[0] == "GET")
    }

    private func respond(_ fd: Int32, _ status: String, _ body: String, includeBody: Bool = true) {
        let bodyBytes = Array(body.utf8)
        let head = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(bodyBytes.count)\r\nConnection: close\r\n\r\n"
        let bytes = Array(head.utf8) + (includeBody ? bodyBytes : [])
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(containing needle: [UInt8]) -> Bool {
        guard count >= needle.count else { return false }
        for start in 0...(count - needle.count) where self[start..<(start + needle.count)].elementsEqual(needle) {
            return true
        }
        return false
    }
}
