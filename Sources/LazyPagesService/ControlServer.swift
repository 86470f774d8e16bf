import Foundation
import LazyPagesCRIU
import LazyPagesControl
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Accepts control connections on a listening unix socket (its own thread) and serves each connection on a thread
/// of its own, one request line at a time: a `wait` blocks only its own connection. The bounds (`ConnectionSlots`):
/// per uid and in all, waits apart; a connection that sends nothing for `idleTimeoutSeconds` is closed.
final class ControlServer: @unchecked Sendable {
    private let listener: Int32
    private let handler: RequestHandler
    private let limits: ServiceLimits
    private let logger: Logger
    /// Written once to stop the accept loop.
    private var stopPipe: [Int32] = [-1, -1]
    private let lock = NSLock()
    private var connections: Set<Int32> = []
    private let slots: ConnectionSlots
    private let connectionsDone = DispatchGroup()
    private let acceptDone = DispatchSemaphore(value: 0)

    init(listener: Int32, handler: RequestHandler, limits: ServiceLimits, logger: Logger) throws {
        self.listener = listener
        self.handler = handler
        self.limits = limits
        self.logger = logger
        slots = ConnectionSlots(limits: limits)
        guard pipe(&stopPipe) == 0 else { throw ServiceError("pipe: \(SystemCallError.reason(errno))") }
        for fd in stopPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    func start() {
        let thread = Thread { [self] in
            acceptLoop()
            acceptDone.signal()
        }
        thread.name = "lazy-pages control"
        thread.start()
    }

    /// Stops accepting connections (the listening socket stays open until the caller closes it).
    func stopAccepting() {
        var byte: UInt8 = 1
        _ = Glibc.write(stopPipe[1], &byte, 1)
        acceptDone.wait()
    }

    /// Ends every open connection (their threads see end of file after the reply in progress) and waits for them,
    /// at most `seconds`.
    func closeConnections(waitingAtMost seconds: Double) {
        lock.lock()
        for fd in connections { shutdown(fd, Int32(SHUT_RD)) }
        lock.unlock()
        _ = connectionsDone.wait(timeout: .now() + seconds)
    }

    private func acceptLoop() {
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0)]
            let ready = retryingOnInterrupt { poll(&fds, 2, -1) }
            if ready < 0 {
                logger.critical("poll on the control socket failed", metadata: ["errno": "\(errno)"])
                return
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno != EINTR && errno != EAGAIN && errno != ECONNABORTED {
                    logger.error("accept on the control socket failed", metadata: ["errno": "\(errno)"])
                }
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var replyTimeout = timeval(tv_sec: limits.replyTimeoutSeconds, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &replyTimeout, socklen_t(MemoryLayout<timeval>.size))
            var idleTimeout = timeval(tv_sec: limits.idleTimeoutSeconds, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idleTimeout, socklen_t(MemoryLayout<timeval>.size))
            // Credentials first, for every connection: the kernel's word on who connected.
            guard let peer = PeerCredentials(socket: fd) else {
                logger.error("no SO_PEERCRED for a control connection; closing it", metadata: ["errno": "\(errno)"])
                close(fd)
                continue
            }
            if let refusal = slots.open(for: peer) {
                write(.failure(.tooManyConnections, refusal), to: fd)
                logger.warning("control connection refused", metadata: [
                    "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "code": "too-many-connections",
                    "error": "\(refusal)",
                ])
                close(fd)
                continue
            }
            lock.lock()
            connections.insert(fd)
            lock.unlock()
            connectionsDone.enter()
            let thread = Thread { [self] in
                serve(fd, peer: peer)
                lock.lock()
                connections.remove(fd)
                lock.unlock()
                slots.close(for: peer)
                close(fd)
                connectionsDone.leave()
            }
            thread.name = "lazy-pages control client"
            thread.start()
        }
    }

    /// Reads request lines until end of file; one reply line each. An oversized line is refused and the connection
    /// closed (what follows it cannot be framed).
    private func serve(_ fd: Int32, peer: PeerCredentials) {
        logger.debug("control connection", metadata: ["peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)"])
        var buffered: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            while let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffered[..<newline])
                buffered.removeSubrange(...newline)
                // A whole oversized line can arrive in one read: the limit holds for it too.
                guard line.count < ControlProtocol.maxMessageBytes else {
                    refuseTooLarge(fd, peer: peer)
                    return
                }
                if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { continue }
                let reply = handler.reply(to: line, from: peer) { wait in
                    if let refusal = slots.beginWait(for: peer) {
                        logger.warning("request refused", metadata: [
                            "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "op": "wait",
                            "code": "too-many-waits", "error": "\(refusal)",
                        ])
                        return .failure(.tooManyWaits, refusal)
                    }
                    defer { slots.endWait(for: peer) }
                    return wait()
                }
                guard write(reply, to: fd) else { return }
            }
            if buffered.count >= ControlProtocol.maxMessageBytes {
                refuseTooLarge(fd, peer: peer)
                return
            }
            let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(fd, raw.baseAddress, raw.count) } }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                logger.warning("control connection idle; closing it", metadata: [
                    "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "idle-timeout": "\(limits.idleTimeoutSeconds) s",
                ])
                return
            }
            guard n > 0 else { return }
            buffered += chunk[..<n]
        }
    }

    private func refuseTooLarge(_ fd: Int32, peer: PeerCredentials) {
        let message = "the request is larger than \(ControlProtocol.maxMessageBytes) bytes"
        logger.warning("request refused", metadata: [
            "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "code": "too-large", "error": "\(message)",
        ])
        write(.failure(.tooLarge, message), to: fd)
    }

    @discardableResult
    private func write(_ reply: ControlReply, to fd: Int32) -> Bool {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(reply) else { return false }
        let bytes = Array(data) + [UInt8(ascii: "\n")]
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { raw in
                retryingOnInterrupt { send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
            }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    logger.warning("control client not reading its replies; disconnecting it", metadata: [
                        "timeout": "\(limits.replyTimeoutSeconds) s",
                    ])
                }
                return false
            }
            offset += n
        }
        return true
    }
}

public struct ServiceError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
