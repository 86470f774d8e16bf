import Foundation
import LinuxSupport
import PageServer
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Blocking socket helpers for the test peers.
enum Wire {
    static func connect(port: UInt16) throws -> Int32 {
        let fd = try TCPSocket.connect(host: "127.0.0.1", port: port, timeoutSeconds: 5)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        var limit = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                retryingOnInterrupt { Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL)) }
            }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Reads exactly `count` bytes; fewer at end of file or error.
    static func receive(_ fd: Int32, _ count: Int) -> [UInt8] { readExactly(fd, count) }
}

/// A scripted page server for fault injection: accepts connections on a thread, reads request headers, and lets
/// `answer` decide what to write back (nil: write nothing, i.e. stall).
final class ScriptedServer: @unchecked Sendable {
    let listener: Int32
    let port: UInt16
    private let answer: @Sendable (PageServerMessage) -> [UInt8]?
    private let lock = NSLock()
    private var connections: [Int32] = []
    private var stopped = false

    init(answer: @escaping @Sendable (PageServerMessage) -> [UInt8]?) throws {
        listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
        port = TCPSocket.localPort(listener)
        self.answer = answer
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return }
            lock.withLock { connections.append(fd) }
            Thread.detachNewThread { [self] in
                while true {
                    let header = Wire.receive(fd, PageServerMessage.size)
                    guard header.count == PageServerMessage.size else { return }
                    let message = PageServerMessage(decoding: header)
                    if message.command == PageServerCommand.close {
                        _ = Wire.send(fd, [0, 0, 0, 0])
                        continue
                    }
                    if let reply = answer(message) { _ = Wire.send(fd, reply) }
                }
            }
        }
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        lock.withLock { for fd in connections { shutdown(fd, Int32(SHUT_RDWR)) } }
    }
}

/// A TCP proxy in front of a page server that "kills" the server mid-transfer once: after `budget` bytes of
/// replies it cuts the connection (in the middle of page data) and stops listening for `downtime`, so reconnects
/// are refused, then listens again on the same port and forwards normally.
final class CuttingProxy: @unchecked Sendable {
    let port: UInt16
    private let target: UInt16
    private let budget: Int
    private let downtime: Double
    private let lock = NSLock()
    private var listener: Int32
    private var cut = false
    private(set) var connections = 0
    private var stopped = false

    init(target: UInt16, budget: Int, downtime: Double) throws {
        self.target = target
        self.budget = budget
        self.downtime = downtime
        listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
        port = TCPSocket.localPort(listener)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    var acceptedConnections: Int { lock.withLock { connections } }

    private func acceptLoop() {
        while true {
            let fd = accept(lock.withLock { listener }, nil, nil)
            if fd < 0 {
                if lock.withLock({ stopped }) { return }
                // Listener closed for the downtime: wait for it to come back.
                usleep(UInt32(downtime * 1e6))
                lock.withLock {
                    listener = (try? TCPSocket.listen(host: "127.0.0.1", port: port)) ?? -1
                }
                if lock.withLock({ listener }) < 0 { return }
                continue
            }
            let first = lock.withLock { () -> Bool in
                connections += 1
                return !cut
            }
            guard let upstream = try? Wire.connect(port: target) else {
                close(fd)
                continue
            }
            // client → server
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                    if n <= 0 { break }
                    if !Wire.send(upstream, Array(buffer[0..<n])) { break }
                }
                shutdown(upstream, Int32(SHUT_WR))
            }
            // server → client, cut after `budget` bytes on the first connection
            Thread.detachNewThread { [self] in
                var buffer = [UInt8](repeating: 0, count: 65536)
                var forwarded = 0
                while true {
                    var want = buffer.count
                    if first { want = min(want, budget - forwarded) }
                    if want == 0 {
                        lock.withLock {
                            cut = true
                            shutdown(listener, Int32(SHUT_RDWR))
                            close(listener)
                        }
                        shutdown(fd, Int32(SHUT_RDWR))
                        break
                    }
                    let n = buffer.withUnsafeMutableBytes { recv(upstream, $0.baseAddress!, want, 0) }
                    if n <= 0 { break }
                    if !Wire.send(fd, Array(buffer[0..<n])) { break }
                    forwarded += n
                }
                close(fd)
                close(upstream)
            }
        }
    }

    func stop() {
        lock.withLock {
            stopped = true
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
        }
    }
}
