import CRIUImages
import Foundation
import LinuxSupport
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pages page-server`: serves an image directory over CRIU's page-server protocol to any number of clients at
/// once (unmodified `criu lazy-pages --page-server` and our own), each page as often as asked, plain or TLS.
///
/// One thread runs an epoll loop over the listener and every connection (non-blocking; no thread per client), and
/// answers each 32-byte request header:
/// - `PS_IOV_GET`: `PS_IOV_ADD_F | PE_PRESENT << 16` with the request's `vaddr`/`dst_id` and `nr_pages` clamped to
///   the end of the stored run (and to `maxReplyPages`), then the bytes, with `sendfile` straight from the pages
///   file (with TLS: read and sent as records). An address the images do not hold gets `nr_pages = 0`, then the
///   connection is closed (CRIU's server closes it too), so probing the address space costs a connection each time.
/// - `PS_IOV_CLOSE`: an `int32` status 0; the connection then ends when the client closes it.
/// - `PS_IOV_FORCE_CLOSE`: status 0, then the connection is closed by us.
/// - anything else: the connection is closed with a log line naming the command; other connections are unaffected.
///
/// `PageServerLimits` bound what a client may hold (connections, idle time, time per request). Running out of
/// descriptors (`EMFILE`) never stops the loop: the connection that found none is refused, and accepting goes on
/// once descriptors are free.
///
/// With `singleSession` it behaves as `criu page-server --lazy-pages` does: the first client accepted is the only
/// one (the listener is closed at once, so later clients are refused by the kernel), and the loop ends when that
/// connection ends; `waitForSession()` then says how it ended (clean, or the reason it failed).
public final class PageServer: @unchecked Sendable {
    /// Where the server listens when no address is given: loopback only. Serving other machines is an explicit
    /// `--address`, and then TLS with client certificates is what keeps strangers out.
    public static let defaultAddress = "127.0.0.1"

    public let images: ServedImages
    public let logger: Logger
    public let limits: PageServerLimits
    /// The port actually listened on (useful with port 0).
    public let port: UInt16
    /// The address listened on ("127.0.0.1" when none was given).
    public let address: String
    private var listener: Int32
    private let tls: TLSCredentials?
    /// The name a client's certificate must carry: the address given, as CRIU checks it (none when the address
    /// was defaulted, or with `--tls-no-cn-verify`).
    private let clientName: String?
    private let counterState = Mutex(Counters())
    /// Entered by `start()`, left when the loop ends (waited for by `stop()` and `waitForSession()`, any number of times).
    private let loopRunning = DispatchGroup()
    /// One session only (`criu page-server --lazy-pages`'s behaviour), see the type's comment.
    public let singleSession: Bool
    /// The connected socket served instead of listening (`--ps-socket`), if any.
    public let inheritedConnection: Int32?
    private let outcomeState = Mutex<SessionOutcome?>(nil)
    private let epoll: Epoll
    private let wakeUp: WakeUpEvent

    /// Counters, for tests and log lines.
    public struct Counters: Sendable, Equatable {
        public var connections = 0
        public var requests = 0
        public var pagesSent = 0
        public var unknownAddresses = 0
        public var badCommands = 0
        /// Connections refused: over the cap, or no descriptor left to take them.
        public var refused = 0
        /// Connections closed for missing a deadline (idle, request, handshake).
        public var timedOut = 0
        /// Failed TLS handshakes and refused client certificates.
        public var tlsFailures = 0
        /// `accept` failures for lack of descriptors (`EMFILE`/`ENFILE`).
        public var outOfDescriptors = 0
        /// Connections open now.
        public var open = 0
    }

    /// How a single session ended (`singleSession`).
    public enum SessionOutcome: Sendable, Equatable {
        /// The client ended it at a request boundary: it closed the connection (after `PS_IOV_CLOSE`, or without
        /// one, as CRIU's server also takes it), or it sent `PS_IOV_FORCE_CLOSE`.
        case closed
        /// The session broke; the reason, as logged.
        case failed(String)
        /// `stop()` ended the server first.
        case stopped
    }

    /// `inheritedConnection` (`--ps-socket`, as `criu page-server --ps-socket`): serve this one connected socket as
    /// a single session instead of listening (`host` and `port` unused; nothing listens, nobody can come back).
    public init(directory: String, host: String?, port: UInt16, tls: TLSCredentials? = nil,
                limits: PageServerLimits = PageServerLimits(), singleSession: Bool = false,
                inheritedConnection: Int32? = nil, logger: Logger) throws {
        images = try ServedImages(directory: directory)
        self.logger = logger
        self.singleSession = singleSession || inheritedConnection != nil
        self.inheritedConnection = inheritedConnection
        var limits = limits
        if inheritedConnection != nil { limits.sessionReturnTimeout = 0 }
        self.limits = limits
        self.tls = tls
        let given = host.flatMap { $0.isEmpty ? nil : $0 }
        address = given ?? Self.defaultAddress
        clientName = tls?.options.verifyName == true ? given : nil
        if let inheritedConnection {
            listener = -1
            self.port = 0
            _ = fcntl(inheritedConnection, F_SETFD, FD_CLOEXEC)
            _ = fcntl(inheritedConnection, F_SETFL, fcntl(inheritedConnection, F_GETFL) | O_NONBLOCK)
        } else {
            listener = try TCPSocket.listen(host: address, port: port, backlog: 128)
            _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
            self.port = TCPSocket.localPort(listener)
        }
        do {
            epoll = try Epoll(capacity: 64)
            wakeUp = try WakeUpEvent()
        } catch {
            if listener >= 0 { close(listener) }
            throw PageServerError(.configuration, "cannot set up the page server's event loop: \(error)")
        }
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC)
        logger.info("page server listening", metadata: [
            "address": "\(address)", "port": "\(self.port)", "images": "\(directory)", "tls": "\(tls != nil)",
            "tasks": "\(images.runs.keys.sorted())", "pages": "\(images.pageCount)",
            "max-connections": "\(limits.maxConnections)", "idle-timeout": "\(limits.idleTimeout)",
            "request-timeout": "\(limits.requestTimeout)", "sessions": "\(singleSession ? "one" : "many")",
        ])
    }

    deinit {
        if reserve >= 0 { close(reserve) }
    }

    public var counters: Counters { counterState.withLock { $0 } }

    /// Starts the event loop on a dedicated thread.
    public func start() {
        loopRunning.enter()
        let thread = Thread { [self] in run() }
        thread.name = "page-server"
        thread.start()
    }

    /// Stops accepting, closes every connection and waits for the loop to end.
    public func stop() {
        wakeUp.signal()
        loopRunning.wait()
    }

    /// `singleSession`: waits for the loop to end (the session's connection ended, or `stop()`), and says how.
    /// Without `singleSession` the loop ends only with `stop()`.
    public func waitForSession() -> SessionOutcome {
        loopRunning.wait()
        return outcomeState.withLock { $0 } ?? .stopped
    }

    /// The session's end, the first one reported.
    private func endSession(_ outcome: SessionOutcome) {
        outcomeState.withLock { if $0 == nil { $0 = outcome } }
    }

    // MARK: The loop (its thread only from here on)

    private static let listenerTag: UInt64 = 0
    private static let wakeUpTag: UInt64 = 1
    private var connections: [UInt64: ServedConnection] = [:]
    private var nextTag: UInt64 = 2
    /// `singleSession`: the one client was accepted (the listener is closed); the loop ends with its connection.
    private var sessionTaken = false
    /// `singleSession`: the client went away without closing the session; listening again until then for its
    /// successor, and how the session ends if none comes.
    private var awaitingReturn: (until: ContinuousClock.Instant, outcome: SessionOutcome)?
    /// A descriptor held in reserve: on `EMFILE` it is closed to take the waiting connection and refuse it.
    private var reserve: Int32 = -1
    private var acceptPausedUntil: ContinuousClock.Instant?
    private var lastSweep = ContinuousClock.now
    private var quietUntil: [String: ContinuousClock.Instant] = [:]
    private var sink = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)

    private func run() {
        defer { loopRunning.leave() }
        guard listener < 0 || add(listener, tag: Self.listenerTag, events: Epoll.readable),
              add(wakeUp.descriptor, tag: Self.wakeUpTag, events: Epoll.readable)
        else {
            let reason = SystemCallError.reason()
            logger.critical("cannot watch the listener", metadata: ["error": "\(reason)"])
            endSession(.failed("cannot watch the listener: \(reason)"))
            return
        }
        if let inheritedConnection { admit(inheritedConnection) }
        while true {
            var stopping = false
            epoll.wait(timeout: 100) { tag, _ in
                switch tag {
                case Self.listenerTag: acceptReady()
                case Self.wakeUpTag: stopping = true
                default: if let client = connections[tag] { ready(client, tag: tag) }
                }
            }
            if stopping {
                endSession(.stopped)
                break
            }
            let now = ContinuousClock.now
            if now - lastSweep >= .milliseconds(100) {
                lastSweep = now
                sweep(now)
            }
            if let until = acceptPausedUntil, now >= until, !sessionTaken {
                acceptPausedUntil = nil
                if !add(listener, tag: Self.listenerTag, events: Epoll.readable) {
                    acceptPausedUntil = now + .milliseconds(100)
                }
            }
            if let waiting = awaitingReturn, now >= waiting.until {
                logger.info("no client came back to the session: it is over")
                awaitingReturn = nil
                sessionTaken = true
                epoll.remove(listener)
                close(listener)
                endSession(waiting.outcome)
            }
            if sessionTaken && connections.isEmpty { break }  // the one session is over
        }
        for tag in Array(connections.keys) { drop(tag) }
        if !sessionTaken && listener >= 0 { close(listener) }
        sink.deallocate()
    }

    private func add(_ fd: Int32, tag: UInt64, events: UInt32) -> Bool {
        (try? epoll.add(fd, tag: tag, events: events)) != nil
    }

    private func setInterest(_ client: ServedConnection, tag: UInt64, _ events: UInt32) {
        guard client.interest != events else { return }
        client.interest = events
        try? epoll.modify(client.connection.descriptor, tag: tag, events: events)
    }

    private func drop(_ tag: UInt64) {
        guard let client = connections.removeValue(forKey: tag) else { return }
        epoll.remove(client.connection.descriptor)
        client.connection.close()
        counterState.withLock { $0.open = connections.count }
        guard sessionTaken else { return }
        let outcome = sessionEnd(client.failure)
        if client.wentAway, !client.closedSession, limits.sessionReturnTimeout > 0, listenAgain() {
            awaitingReturn = (ContinuousClock.now + .milliseconds(Int64(limits.sessionReturnTimeout * 1000)), outcome)
            sessionTaken = false
            logger.notice("the client went away without closing the session: listening again for its successor (a restarted lazy-pagesd)", metadata: [
                "seconds": "\(limits.sessionReturnTimeout)", "port": "\(port)",
            ])
        } else {
            endSession(outcome)
        }
    }

    /// Binds the session's port again (the listener was closed when the session was taken).
    private func listenAgain() -> Bool {
        do {
            let fd = try TCPSocket.listen(host: address, port: port, backlog: 128)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard add(fd, tag: Self.listenerTag, events: Epoll.readable) else {
                close(fd)
                return false
            }
            listener = fd
            return true
        } catch {
            logger.error("cannot listen again for the session's client", metadata: ["error": "\(error)"])
            return false
        }
    }

    private func sessionEnd(_ failure: String?) -> SessionOutcome {
        if let failure {
            logger.error("session over: \(failure)")
            return .failed(failure)
        }
        logger.info("session over")
        return .closed
    }

    /// `singleSession`: the first connection taken is the session; nobody else may connect any more (as CRIU's
    /// page server closes its listener after its one `accept`). `failure`: it could not even be admitted.
    private func takeSession(failure: String? = nil) {
        guard singleSession, !sessionTaken else { return }
        sessionTaken = true
        if awaitingReturn != nil {
            awaitingReturn = nil
            logger.notice("a client came back to the session: it goes on")
        }
        if listener >= 0 {  // an inherited connection: nothing listens
            epoll.remove(listener)
            close(listener)
            acceptPausedUntil = nil
            logger.info("serving this one client only (single session): no further connections are accepted")
        }
        if let failure { endSession(sessionEnd(failure)) }
    }

    /// A log line at most once a second per `key` (a flood of refusals must not become a flood of log lines).
    private func rarely(_ key: String, _ body: () -> Void) {
        let now = ContinuousClock.now
        if let until = quietUntil[key], now < until { return }
        quietUntil[key] = now + .seconds(1)
        body()
    }

    // MARK: Accepting

    private func acceptReady() {
        for _ in 0..<64 {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                switch errno {
                case EINTR, ECONNABORTED, EPROTO: continue
                case EAGAIN: return
                case EMFILE, ENFILE:
                    outOfDescriptors(errno)
                    if acceptPausedUntil != nil { return }
                    continue
                default:
                    let error = SystemCallError.reason()
                    rarely("accept") { logger.error("accept failed; retrying in 100 ms", metadata: ["error": "\(error)"]) }
                    pauseAccepting()
                    return
                }
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            admit(fd)
            if sessionTaken { return }
        }
    }

    /// `EMFILE`/`ENFILE`: the waiting connection is taken with the reserve descriptor and closed (the client sees
    /// the connection end at once instead of hanging in the backlog); without a reserve, accepting pauses briefly.
    private func outOfDescriptors(_ code: Int32) {
        counterState.withLock { $0.outOfDescriptors += 1 }
        let openCount = connections.count
        rarely("emfile") {
            logger.error("out of file descriptors; refusing new connections until some close", metadata: [
                "error": "\(SystemCallError.reason(code))", "open-connections": "\(openCount)",
            ])
        }
        guard reserve >= 0 else { return pauseAccepting() }
        close(reserve)
        reserve = -1
        let fd = accept(listener, nil, nil)
        if fd >= 0 {
            close(fd)
            counterState.withLock { $0.refused += 1 }
        }
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if reserve < 0 { pauseAccepting() }
    }

    private func pauseAccepting() {
        epoll.remove(listener)
        acceptPausedUntil = ContinuousClock.now + .milliseconds(100)
    }

    private func admit(_ fd: Int32) {
        let connection = TCPConnection(descriptor: fd)
        guard connections.count < limits.maxConnections else {
            counterState.withLock { $0.refused += 1 }
            rarely("cap") {
                logger.warning("connection cap reached; refusing a client", metadata: [
                    "client": "\(connection.peer)", "max-connections": "\(limits.maxConnections)",
                ])
            }
            connection.close()
            return
        }
        TCPSocket.setNoDelay(fd)
        if let tls {
            do {
                try connection.startTLS(server: true, credentials: tls)
            } catch {
                logger.error("cannot start TLS for a client", metadata: ["client": "\(connection.peer)", "error": "\(error)"])
                connection.close()
                return takeSession(failure: "cannot start TLS for the client \(connection.peer): \(error)")
            }
        }
        let client = ServedConnection(connection: connection, logger: logger, phase: tls == nil ? .request : .handshake,
                                      now: ContinuousClock.now)
        let tag = nextTag
        nextTag += 1
        guard add(fd, tag: tag, events: client.interest) else {
            let reason = SystemCallError.reason()
            logger.error("cannot watch a client", metadata: ["client": "\(connection.peer)", "error": "\(reason)"])
            connection.close()
            return takeSession(failure: "cannot watch the client \(connection.peer): \(reason)")
        }
        connections[tag] = client
        takeSession()
        counterState.withLock {
            $0.connections += 1
            $0.open = connections.count
        }
        client.log.info("client connected", metadata: ["tls": "\(tls != nil)"])
        ready(client, tag: tag)
    }

    // MARK: One connection

    private func ready(_ client: ServedConnection, tag: UInt64) {
        switch client.phase {
        case .handshake: handshake(client, tag: tag)
        case .request: readRequests(client, tag: tag)
        case .reply: if continueReply(client, tag: tag) { readRequests(client, tag: tag) }
        case .closing: drain(client, tag: tag)
        }
    }

    private func handshake(_ client: ServedConnection, tag: UInt64) {
        switch client.connection.handshakeStep() {
        case .wantRead: setInterest(client, tag: tag, Epoll.readable)
        case .wantWrite: setInterest(client, tag: tag, Epoll.writable)
        case .failed(let reason):
            counterState.withLock { $0.tlsFailures += 1 }
            client.log.warning("TLS refused", metadata: ["reason": "\(reason)"])
            client.failure = "TLS handshake with \(client.connection.peer) failed: \(reason)"
            drop(tag)
        case .done:
            if let reason = client.connection.verifyPeer(hostname: clientName) {
                counterState.withLock { $0.tlsFailures += 1 }
                client.log.warning("TLS refused: the client's certificate is not accepted", metadata: ["reason": "\(reason)"])
                client.failure = "the certificate of \(client.connection.peer) is not accepted: \(reason)"
                return drop(tag)
            }
            client.log.info("TLS handshake done; client certificate verified")
            client.phase = .request
            client.since = ContinuousClock.now
            setInterest(client, tag: tag, Epoll.readable)
            readRequests(client, tag: tag)
        }
    }

    private func readRequests(_ client: ServedConnection, tag: UInt64) {
        while client.phase == .request {
            let result = client.header.withUnsafeMutableBytes {
                client.connection.receive($0.baseAddress! + client.headerBytes, $0.count - client.headerBytes)
            }
            switch result {
            case .wouldBlock:
                return setInterest(client, tag: tag, Epoll.readable)
            case .closed:
                client.wentAway = true
                if client.headerBytes == 0 {
                    client.log.info("client disconnected")
                } else {
                    client.log.warning("connection ended in the middle of a header", metadata: ["bytes": "\(client.headerBytes)"])
                    client.failure = "\(client.connection.peer) closed the connection in the middle of a request header"
                        + " (\(client.headerBytes) of \(PageServerMessage.size) bytes)"
                }
                return drop(tag)
            case .failed(let reason), .refused(let reason):
                client.wentAway = true
                client.log.warning("connection failed", metadata: ["error": "\(reason)"])
                client.failure = "the connection with \(client.connection.peer) failed: \(reason)"
                return drop(tag)
            case .done(let n):
                if client.headerBytes == 0 { client.requestStarted = ContinuousClock.now }
                client.headerBytes += n
                guard client.headerBytes == PageServerMessage.size else { continue }
                client.headerBytes = 0
                answer(PageServerMessage(decoding: client.header), client, tag: tag)
            }
        }
    }

    private func answer(_ message: PageServerMessage, _ client: ServedConnection, tag: UInt64) {
        switch message.command {
        case PageServerCommand.get:
            prepareGet(message, client)
        case PageServerCommand.close, PageServerCommand.forceClose:
            client.small = [0, 0, 0, 0]
            client.closeAfterReply = message.command == PageServerCommand.forceClose
            client.closedSession = true
            client.log.info("client closed the session", metadata: ["command": "\(PageServerCommand.name(message.command))"])
        default:
            counterState.withLock { $0.badCommands += 1 }
            client.log.error("unexpected command; closing this connection", metadata: ["message": "\(message)"])
            client.failure = "\(client.connection.peer) sent an unexpected command (\(message))"
            return beginClosing(client, tag: tag)
        }
        client.phase = .reply
        client.smallSent = 0
        _ = continueReply(client, tag: tag)
    }

    private func prepareGet(_ request: PageServerMessage, _ client: ServedConnection) {
        let pid = Int32(truncatingIfNeeded: request.destination)
        let found = images.locate(pid: pid, address: request.address, maxPages: min(request.pageCount, limits.maxReplyPages))
        let count = found?.pageCount ?? 0
        counterState.withLock {
            $0.requests += 1
            $0.pagesSent += Int(count)
            if count == 0 { $0.unknownAddresses += 1 }
        }
        client.small = PageServerMessage.pages(answering: request, pageCount: count).bytes
        guard let found, count > 0 else {
            client.log.warning("request for pages the images do not hold; answering nr_pages 0 and closing the connection",
                               metadata: ["request": "\(request)"])
            client.closeAfterReply = true
            client.fileLeft = 0
            client.failure = "\(client.connection.peer) asked for pages the images do not hold (\(request))"
            return
        }
        client.log.trace("sending pages", metadata: ["request": "\(request)", "pages": "\(count)"])
        client.file = found.descriptor
        client.fileOffset = off_t(found.offset)
        client.fileLeft = Int(count) * basePageSize
    }

    /// Sends what is left of the reply; true when it is done and the next request may be read.
    private func continueReply(_ client: ServedConnection, tag: UInt64) -> Bool {
        let connection = client.connection
        func broken(_ reason: String) -> Bool {
            client.log.warning("sending the reply failed", metadata: ["error": "\(reason)"])
            client.wentAway = true
            client.failure = "sending a reply to \(client.connection.peer) failed: \(reason)"
            drop(tag)
            return false
        }
        func wait() -> Bool {
            setInterest(client, tag: tag, Epoll.writable)
            return false
        }
        while client.smallSent < client.small.count {
            let result = client.small.withUnsafeBytes {
                connection.send($0.baseAddress! + client.smallSent, $0.count - client.smallSent, more: client.fileLeft > 0)
            }
            switch result {
            case .done(let n): client.smallSent += n
            case .wouldBlock: return wait()
            case .closed: return broken("connection closed")
            case .failed(let reason), .refused(let reason): return broken(reason)
            }
        }
        while client.fileLeft > 0 {
            switch connection.sendFile(client.file, offset: &client.fileOffset, count: client.fileLeft, scratch: sink) {
            case .done(let n): client.fileLeft -= n
            case .wouldBlock: return wait()
            case .closed: return broken("connection closed")
            case .failed(let reason), .refused(let reason): return broken(reason)
            }
        }
        if connection.hasPendingOutput {
            switch connection.flush() {
            case .done: break
            case .wouldBlock: return wait()
            case .closed: return broken("connection closed")
            case .failed(let reason), .refused(let reason): return broken(reason)
            }
        }
        client.small = []
        client.smallSent = 0
        client.requestStarted = nil
        client.since = ContinuousClock.now
        if client.closeAfterReply {
            beginClosing(client, tag: tag)
            return false
        }
        client.phase = .request
        return true
    }

    /// Ends our side so that what was sent arrives: closing a TCP socket with unread input (a client that
    /// pipelined requests after a FORCE_CLOSE or a bad command) sends a reset, and the peer loses the replies still
    /// in flight, the close status included (found by the page-server fuzzer). So: TLS close_notify, FIN, then what
    /// the client still sends is read and dropped, for at most a second, then the socket is closed.
    private func beginClosing(_ client: ServedConnection, tag: UInt64) {
        client.connection.finishSending()
        client.phase = .closing
        client.since = ContinuousClock.now
        setInterest(client, tag: tag, Epoll.readable)
        drain(client, tag: tag)
    }

    private func drain(_ client: ServedConnection, tag: UInt64) {
        while true {
            let n = retryingOnInterrupt { recv(client.connection.descriptor, sink, 1 << 16, Int32(MSG_DONTWAIT)) }
            if n > 0 { continue }
            if n < 0 && errno == EAGAIN { return }
            return drop(tag)
        }
    }

    private func sweep(_ now: ContinuousClock.Instant) {
        for (tag, client) in connections {
            guard let (at, what) = client.deadline(limits), now >= at else { continue }
            if client.phase != .closing {
                counterState.withLock { $0.timedOut += 1 }
                client.log.warning("closing the connection: \(what)")
                client.failure = "closed the connection with \(client.connection.peer): \(what)"
            }
            drop(tag)
        }
    }
}
