import Foundation
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 responder for Prometheus scrapes: `GET /metrics` gets the text exposition, anything else a 404
/// (or 405). One thread runs a `poll` loop over every open connection, all non-blocking, so a slow client delays
/// nobody: each request must arrive (at most 8 KiB) and its reply be taken within `deadlineSeconds` of the
/// connection's accept, or the connection is closed. At most `maxConnections` are open at once; beyond, the
/// oldest is dropped for the newcomer. One request per connection.
final class MetricsEndpoint: @unchecked Sendable {
    /// Where metrics are served unless told otherwise: loopback only.
    static let defaultHost = "127.0.0.1"
    static let maxRequestBytes = 8192

    let host: String
    /// The port bound (the one asked for, or the kernel's choice for 0).
    let port: UInt16
    let deadlineSeconds: Double
    let maxConnections: Int
    private let descriptor: Int32
    private let render: @Sendable () -> String
    private let logger: Logger

    private final class Client {
        let fd: Int32
        let deadline: Double
        var request: [UInt8] = []
        var reply: [UInt8]?
        var sent = 0
        init(fd: Int32, deadline: Double) {
            self.fd = fd
            self.deadline = deadline
        }
    }

    /// Binds `host:port` (IPv4 dotted quad) and listens.
    init(host: String, port: UInt16, deadlineSeconds: Double = 5, maxConnections: Int = 64, logger: Logger,
         render: @escaping @Sendable () -> String) throws
    {
        self.host = host
        self.render = render
        self.logger = logger
        self.deadlineSeconds = deadlineSeconds
        self.maxConnections = maxConnections
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw ServiceError("--metrics-address: \"\(host)\" is not an IPv4 address")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ServiceError("socket(AF_INET): \(SystemCallError.reason(errno))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let reason = SystemCallError.reason(errno)
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

    private static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    private func serveForever() {
        var clients: [Client] = []
        while true {
            var fds = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)]
            fds += clients.map { pollfd(fd: $0.fd, events: Int16($0.reply == nil ? POLLIN : POLLOUT), revents: 0) }
            let now = Self.now()
            let nearest = clients.map(\.deadline).min().map { max(0, $0 - now) } ?? 3600
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(nearest * 1000 + 1, 3_600_000)))
            if ready < 0 {
                if errno == EINTR { continue }
                logger.critical("poll on the metrics socket failed", metadata: ["errno": "\(errno)"])
                return
            }
            var finished: Set<Int32> = []
            for (client, entry) in zip(clients, fds.dropFirst()) where entry.revents != 0 {
                if step(client) { finished.insert(client.fd) }
            }
            let later = Self.now()
            for client in clients where !finished.contains(client.fd) && later >= client.deadline {
                logger.warning("metrics request deadline passed; closing the connection", metadata: [
                    "deadline": "\(deadlineSeconds) s", "received": "\(client.request.count)",
                ])
                finished.insert(client.fd)
            }
            clients.removeAll { client in
                guard finished.contains(client.fd) else { return false }
                close(client.fd)
                return true
            }
            if fds[0].revents != 0 { acceptAll(into: &clients) }
        }
    }

    private func acceptAll(into clients: inout [Client]) {
        while true {
            let fd = accept(descriptor, nil, nil)
            guard fd >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    // EMFILE and the like: the pending connection stays queued; try again on the next round.
                    logger.error("accept on the metrics socket failed", metadata: ["errno": "\(errno)"])
                }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if clients.count >= maxConnections {
                let oldest = clients.removeFirst()
                logger.warning("too many metrics connections; dropping the oldest", metadata: ["open": "\(maxConnections)"])
                close(oldest.fd)
            }
            clients.append(Client(fd: fd, deadline: Self.now() + deadlineSeconds))
        }
    }

    /// Reads or writes what the client is ready for; true when the connection is done.
    private func step(_ client: Client) -> Bool {
        if client.reply == nil {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(client.fd, $0.baseAddress, $0.count) }
            if n < 0 { return errno != EINTR && errno != EAGAIN }
            if n == 0 { return true }
            client.request += chunk[..<n]
            guard let reply = answer(client.request) else { return false }
            client.reply = reply
        }
        guard let reply = client.reply else { return false }
        while client.sent < reply.count {
            let n = reply[client.sent...].withUnsafeBytes { raw in
                retryingOnInterrupt { send(client.fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
            }
            if n < 0 {
                return errno != EAGAIN && errno != EWOULDBLOCK
            }
            client.sent += n
        }
        return true
    }

    /// The reply to a request once it is complete (or too large to ever be); nil while it is still arriving.
    private func answer(_ request: [UInt8]) -> [UInt8]? {
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        guard request.ends(containing: end) else {
            return request.count < Self.maxRequestBytes ? nil : respond("431 Request Header Fields Too Large", "")
        }
        let firstLine = String(decoding: request.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        let parts = firstLine.split(separator: " ")
        guard parts.count == 3 else { return respond("400 Bad Request", "") }
        guard parts[0] == "GET" || parts[0] == "HEAD" else { return respond("405 Method Not Allowed", "") }
        guard parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") else { return respond("404 Not Found", "") }
        return respond("200 OK", render(), includeBody: parts[0] == "GET")
    }

    private func respond(_ status: String, _ body: String, includeBody: Bool = true) -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        let head = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(bodyBytes.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + (includeBody ? bodyBytes : [])
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
