import CRIUImages
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pages page-server`: serves an image directory over CRIU's page-server protocol to any number of clients at
/// once (unmodified `criu lazy-pages --page-server` and our own), each page as often as asked.
///
/// One thread accepts; each connection gets a thread that reads a 32-byte header at a time and answers:
/// - `PS_IOV_GET`: `PS_IOV_ADD_F | PE_PRESENT << 16` with the request's `vaddr`/`dst_id` and `nr_pages` clamped to
///   the end of the stored run, then the bytes, sent with `sendfile` straight from the pages file. An address the
///   images do not hold gets `nr_pages = 0` (CRIU's own server drops the connection instead; the reply is what the
///   protocol documents for "unknown", and the connection stays usable).
/// - `PS_IOV_CLOSE`: an `int32` status 0; the connection then ends when the client closes it.
/// - `PS_IOV_FORCE_CLOSE`: status 0, then the connection is closed by us.
/// - anything else: the connection is closed with a log line naming the command; other connections are unaffected.
public final class PageServer: @unchecked Sendable {
    public let images: ServedImages
    public let logger: Logger
    /// The port actually listened on (useful with port 0).
    public let port: UInt16
    private let listener: Int32
    private let state = Mutex(State())
    private let acceptDone = DispatchSemaphore(value: 0)

    /// Counters, for tests and the final log line.
    public struct Counters: Sendable, Equatable {
        public var connections = 0
        public var requests = 0
        public var pagesSent = 0
        public var unknownAddresses = 0
        public var badCommands = 0
    }

    private struct State {
        var connections: Set<Int32> = []
        var counters = Counters()
        var stopping = false
        var running = 0
    }

    public init(directory: String, host: String?, port: UInt16, logger: Logger) throws {
        images = try ServedImages(directory: directory)
        self.logger = logger
        listener = try TCPSocket.listen(host: host, port: port)
        self.port = TCPSocket.localPort(listener)
        logger.info("page server listening", metadata: [
            "address": "\(host ?? "*")", "port": "\(self.port)", "images": "\(directory)",
            "tasks": "\(images.runs.keys.sorted())", "pages": "\(images.pageCount)",
        ])
    }

    public var counters: Counters { state.withLock { $0.counters } }

    /// Starts accepting on a dedicated thread.
    public func start() {
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "page-server accept"
        thread.start()
    }

    /// Stops accepting, cuts every connection and waits for their threads to end.
    public func stop() {
        let fds: Set<Int32> = state.withLock {
            $0.stopping = true
            return $0.connections
        }
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
        acceptDone.wait()
        close(listener)
        while state.withLock({ $0.running }) > 0 { usleep(1000) }
    }

    private func acceptLoop() {
        defer { acceptDone.signal() }
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if !state.withLock({ $0.stopping }) {
                    logger.error("accept failed; no more connections", metadata: ["error": "\(errnoText())"])
                }
                return
            }
            let admitted = state.withLock { s -> Bool in
                guard !s.stopping else { return false }
                s.connections.insert(fd)
                s.counters.connections += 1
                s.running += 1
                return true
            }
            guard admitted else {
                close(fd)
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            TCPSocket.setNoDelay(fd)
            let thread = Thread { [self] in
                serve(fd)
                state.withLock {
                    $0.connections.remove(fd)
                    $0.running -= 1
                }
                Self.closeGracefully(fd)
            }
            thread.name = "page-server connection"
            thread.start()
        }
    }

    // MARK: One connection

    private func serve(_ fd: Int32) {
        let peer = TCPSocket.peerName(fd)
        var log = logger
        log[metadataKey: "client"] = "\(peer)"
        log.info("client connected")
        var header = [UInt8](repeating: 0, count: PageServerMessage.size)
        while true {
            let got = receiveAll(fd, &header)
            if got == 0 {
                log.info("client disconnected")
                return
            }
            guard got == PageServerMessage.size else {
                log.warning("connection ended in the middle of a header", metadata: ["bytes": "\(got)", "error": "\(errnoText())"])
                return
            }
            let message = PageServerMessage(decoding: header)
            switch message.command {
            case PageServerCommand.get:
                guard answerGet(fd, message, log) else { return }
            case PageServerCommand.close, PageServerCommand.forceClose:
                var status: Int32 = 0
                guard sendAll(fd, &status, 4) else {
                    log.warning("cannot send the close status", metadata: ["error": "\(errnoText())"])
                    return
                }
                log.info("client closed the session", metadata: ["command": "\(PageServerCommand.name(message.command))"])
                if message.command == PageServerCommand.forceClose { return }
            default:
                state.withLock { $0.counters.badCommands += 1 }
                log.error("unexpected command; closing this connection", metadata: ["message": "\(message)"])
                return
            }
        }
    }

    /// Answers one `PS_IOV_GET`; false when the connection broke.
    private func answerGet(_ fd: Int32, _ request: PageServerMessage, _ log: Logger) -> Bool {
        let pid = Int32(truncatingIfNeeded: request.destination)
        let found = images.locate(pid: pid, address: request.address, maxPages: request.pageCount)
        let count = found?.pageCount ?? 0
        state.withLock {
            $0.counters.requests += 1
            $0.counters.pagesSent += Int(count)
            if found == nil || count == 0 { $0.counters.unknownAddresses += 1 }
        }
        var reply = [UInt8](repeating: 0, count: PageServerMessage.size)
        reply.withUnsafeMutableBytes { PageServerMessage.pages(answering: request, pageCount: count).encode(into: $0) }
        guard let found, count > 0 else {
            log.warning("request for pages the images do not hold; answering nr_pages 0", metadata: ["request": "\(request)"])
            return sendAll(fd, &reply, reply.count)
        }
        log.trace("sending pages", metadata: ["request": "\(request)", "pages": "\(count)"])
        guard sendAll(fd, &reply, reply.count, flags: Int32(MSG_MORE)) else { return false }
        var offset = off_t(found.offset)
        var left = Int(count) * criuPageSize
        while left > 0 {
            let n = sendfile(fd, found.descriptor, &offset, left)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                log.warning("sending page data failed", metadata: ["error": "\(errnoText())"])
                return false
            }
            left -= n
        }
        return true
    }

    /// Closes a connection so that what was sent arrives: closing a TCP socket with unread input (a client that
    /// pipelined requests after a FORCE_CLOSE or a bad command) sends a reset, and the peer loses the replies still
    /// in flight, the close status included (found by the page-server fuzzer). So: end our side (FIN after the data),
    /// read and drop what the client still sends, for at most a second, then close.
    static func closeGracefully(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_WR))
        let deadline = ContinuousClock.now + .seconds(1)
        var sink = [UInt8](repeating: 0, count: 16384)
        while ContinuousClock.now < deadline {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, 100)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 { break }
            if ready == 0 { continue }
            let n = sink.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { break }
        }
        close(fd)
    }

    private func receiveAll(_ fd: Int32, _ buffer: inout [UInt8]) -> Int {
        var have = 0
        while have < buffer.count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, $0.count - have, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return have }
            have += n
        }
        return have
    }

    private func sendAll(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int, flags: Int32 = 0) -> Bool {
        var done = 0
        while done < count {
            let n = send(fd, bytes + done, count - done, Int32(MSG_NOSIGNAL) | flags)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
