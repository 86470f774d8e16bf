import LinuxSupport
import LazyPagesEngine
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How the client talks to a page server and what it does when the network fails.
public struct PageServerClientOptions: Sendable {
    public var host: String
    public var port: UInt16
    /// Reconnect attempts after a failure before the restore fails (the count restarts after every answered request).
    public var retries: Int = 5
    /// Delay before the first reconnect; doubled for every further attempt (capped at 30 s).
    public var retryDelay: Double = 0.2
    /// A connection with requests outstanding and no answer completed for this long is considered dead. Counting
    /// answers, not bytes, a source that trickles is caught too: with requests of at most 64 pages (the fill
    /// chunk), the default asks for about 26 KiB/s at least.
    public var stallTimeout: Double = 10
    /// Background pages in flight at most (so a fault's request waits behind at most this much data).
    public var backgroundPagesInFlight: Int = 512  // 2 MiB
    /// TLS credentials (`--tls`): every connection is TLS, the server's certificate verified against the CA and,
    /// unless `--tls-no-cn-verify`, its name against `host` (as CRIU does). Nil: plain TCP.
    public var tls: TLSCredentials?
    /// A connected socket to use instead of connecting (`--ps-socket`, as CRIU's): the only connection; when it
    /// fails the restore fails (it cannot be opened again).
    public var inheritedSocket: Int32?

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var serverName: String {
        if let inheritedSocket { return "on the inherited socket \(inheritedSocket)" }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// The engine's remote page source over CRIU's page-server protocol: one TCP connection, several `PS_IOV_GET` in
/// flight (urgent ones sent before queued background ones, background bytes capped), answers validated before
/// any byte is used, then handed to the engine. Connection failures (refused, reset, closed, stalled) reconnect
/// with exponential backoff and re-send every unanswered request; when the retries are used up, or the server
/// breaks the protocol, the restore fails with a message naming the server.
///
/// Everything runs on the engine's loop thread, except `close()` (after the loop ended).
public final class PageServerClient: RemotePageSource, @unchecked Sendable {
    public let options: PageServerClientOptions
    private let logger: Logger
    private weak var engine: RestoreEngine?

    private struct Outstanding {
        var request: RemotePageRequest
        var message: PageServerMessage
    }

    private var connection: TCPConnection?
    /// The inherited socket (`options.inheritedSocket`) was taken: it is never taken twice.
    private var usedInheritedSocket = false
    private var timer: PeriodicTimer?
    /// Unanswered requests in send order; the first `sentCount` were written (the next one `partialBytes` of it).
    private var queue: [Outstanding] = []
    private var queueHead = 0
    private var sentCount = 0
    private var partialBytes = 0
    private var backgroundPages = 0

    // Receiving the answer to queue[queueHead].
    private var header = [UInt8](repeating: 0, count: PageServerMessage.size)
    private var headerBytes = 0
    private var replyPages = 0
    private var dataBytes = 0
    private var buffer: UnsafeMutableRawPointer
    private var bufferSize: Int

    private var lastProgress: UInt64 = 0
    private var failures = 0
    private var reconnectAt: UInt64?
    private var lastError = ""
    private var finished = false

    public init(options: PageServerClientOptions, logger: Logger) {
        self.options = options
        self.logger = logger
        bufferSize = 64 * basePageSize
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: basePageSize)
    }

    deinit {
        buffer.deallocate()
        connection?.close()
    }

    // MARK: RemotePageSource

    public func start(engine: RestoreEngine) throws {
        self.engine = engine
        let timer: PeriodicTimer
        do {
            timer = try PeriodicTimer(interval: max(0.01, min(0.25, options.stallTimeout / 4)))
        } catch {
            throw PageServerError(.configuration, "\(error)")
        }
        self.timer = timer
        try engine.watch(descriptor: timer.descriptor) { [unowned self] in self.timerFired() }
        // The first connection: the same retry policy, but blocking (no task is restored yet).
        while true {
            do {
                try connect()
                return
            } catch let error as PageServerError where error.kind == .configuration {
                throw error  // a refused certificate, a TLS setup error: trying again changes nothing
            } catch {
                failures += 1
                lastError = "\(error)"
                guard failures <= options.retries else {
                    throw PageServerError(.connection, "page server \(options.serverName) unreachable after \(failures) attempts: \(error)")
                }
                let delay = backoff()
                logger.warning("cannot connect to the page server; retrying", metadata: [
                    "server": "\(options.serverName)", "attempt": "\(failures)", "delay": "\(delay)", "error": "\(error)",
                ])
                usleep(UInt32(delay * 1e6))
            }
        }
    }

    public func request(_ request: RemotePageRequest) {
        enqueue(request)
        flush()
    }

    /// The background requests of one fill step: queued together and written together (one `send` on a plain
    /// socket; with TLS a record each, see `requestsPerSend`).
    public func request(batch: [RemotePageRequest]) {
        for request in batch {
            precondition(!request.urgent, "a batch holds background requests")
            enqueue(request)
        }
        if !batch.isEmpty { flush() }
    }

    /// Queues `request` to be written: an urgent one before every background request not yet (partly) written.
    private func enqueue(_ request: RemotePageRequest) {
        let entry = Outstanding(
            request: request,
            message: .get(pid: request.imagePid, address: request.dumpAddress, pageCount: request.pageCount))
        if request.urgent {
            // Before every background request not yet (partly) written, after the urgent ones queued earlier.
            var at = queueHead + sentCount + (partialBytes > 0 ? 1 : 0)
            while at < queue.count && queue[at].request.urgent { at += 1 }
            queue.insert(entry, at: at)
        } else {
            queue.append(entry)
            backgroundPages += request.pageCount
        }
        if queue.count - queueHead == 1 { lastProgress = monotonicNanoseconds() }  // the queue was idle
    }

    public var backgroundPagesAvailable: Int { max(0, options.backgroundPagesInFlight - backgroundPages) }

    /// Ends the session the way CRIU does: `PS_IOV_CLOSE`, then the server's `int32` status. Returns the status,
    /// or nil when the server did not answer (logged).
    @discardableResult
    public func close(timeoutSeconds: Double = 5) -> Int32? {
        finished = true
        defer {
            connection?.close()
            connection = nil
        }
        guard let connection else { return nil }
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeoutSeconds * 1000))
        /// Waits for the socket (a safety bound, not a pace): false at the deadline.
        func wait(_ events: Int32) -> Bool {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            var entry = pollfd(fd: connection.descriptor, events: Int16(events), revents: 0)
            _ = poll(&entry, 1, Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)))
            return true
        }
        // A request written in part is finished first (PS_IOV_CLOSE after half a request would be read as its
        // rest); requests not written at all are dropped.
        var bytes = PageServerMessage(cmd: PageServerCommand.close).bytes
        var sent = 0
        if partialBytes > 0 {
            bytes = queue[queueHead + sentCount].message.bytes + bytes
            sent = partialBytes
            sentCount += 1
            partialBytes = 0
        }
        var failure: String?
        while failure == nil && (sent < bytes.count || connection.hasPendingOutput) {
            let result = sent < bytes.count
                ? bytes.withUnsafeBytes { connection.send($0.baseAddress! + sent, $0.count - sent) }
                : connection.flush()
            switch result {
            case .done(let n): sent += n
            case .wouldBlock: if !wait(POLLOUT) { failure = "timed out" }
            case .closed: failure = "connection closed"
            case .failed(let reason), .refused(let reason): failure = reason
            }
        }
        if let failure {
            logger.warning("cannot send PS_IOV_CLOSE", metadata: ["server": "\(options.serverName)", "error": "\(failure)"])
            return nil
        }
        // The answers to requests written before come first (in order): read past them. Closing with them unread
        // would reset the connection, and the server would end the session as failed instead of closed (the
        // restore can end with requests in flight: processes that exited).
        while sentCount > 0 && failure == nil {
            switch receiveAnswer(connection) {
            case .partial: continue
            case .wouldBlock: if !wait(POLLIN) { failure = "no answer within \(timeoutSeconds) s" }
            case .answered:
                queueHead += 1
                sentCount -= 1
                headerBytes = 0
                dataBytes = 0
                replyPages = 0
            case .closed: failure = "connection closed"
            case .failed(let reason), .refused(let reason): failure = reason
            case .brokeProtocol(let error): failure = "\(error)"
            }
        }
        if let failure {
            logger.warning("the page server did not answer PS_IOV_CLOSE", metadata: [
                "server": "\(options.serverName)", "error": "\(failure)",
            ])
            return nil
        }
        var status: Int32 = -1
        var have = 0
        while have < 4 {
            let result = withUnsafeMutableBytes(of: &status) { connection.receive($0.baseAddress! + have, 4 - have) }
            switch result {
            case .done(let n): have += n
            case .wouldBlock: if !wait(POLLIN) { failure = "no answer within \(timeoutSeconds) s" }
            case .closed: failure = "connection closed"
            case .failed(let reason), .refused(let reason): failure = reason
            }
            if let failure {
                logger.warning("the page server did not answer PS_IOV_CLOSE", metadata: [
                    "server": "\(options.serverName)", "error": "\(failure)",
                ])
                return nil
            }
        }
        if options.tls != nil {
            // CRIU's page server answers with its TLS close_notify and then waits for our end: closing with that
            // record unread would reset the connection, and the server would fail ("Unexpected data: Connection
            // reset by peer"). Ours sends its close_notify only once it has read ours. So, as CRIU's own client
            // does (gnutls_bye with SHUT_RDWR): our close_notify and FIN first, then read up to the server's end.
            // (Waiting for the server's close_notify before sending ours held every TLS restore from our page
            // server until the timeout: 5 s.)
            connection.finishSending()
            var scratch = [UInt8](repeating: 0, count: 256)
            drain: while true {
                let result = scratch.withUnsafeMutableBytes { connection.receive($0.baseAddress!, $0.count) }
                switch result {
                case .done: continue
                case .wouldBlock: if !wait(POLLIN) { break drain }
                default: break drain
                }
            }
        }
        logger.info("page server session closed", metadata: ["server": "\(options.serverName)", "status": "\(status)"])
        return status
    }

    // MARK: Connection

    private func connect() throws {
        let timeout = min(max(options.stallTimeout, 0.1), 5)
        let fd: Int32
        if let inherited = options.inheritedSocket {
            guard !usedInheritedSocket else {
                throw PageServerError(.configuration, "the page-server connection was inherited (--ps-socket \(inherited)) and is gone: it cannot be opened again")
            }
            usedInheritedSocket = true
            _ = fcntl(inherited, F_SETFD, FD_CLOEXEC)
            _ = fcntl(inherited, F_SETFL, fcntl(inherited, F_GETFL) | O_NONBLOCK)
            fd = inherited
        } else {
            fd = try TCPSocket.connect(host: options.host, port: options.port, timeoutSeconds: timeout)
        }
        let connection = TCPConnection(descriptor: fd, peer: "page server \(options.serverName)")
        if let tls = options.tls {
            try connection.startTLS(server: false, credentials: tls)
            try connection.handshake(timeout: timeout, hostname: tls.options.verifyName ? options.host : nil)
        }
        do {
            try engine?.watch(descriptor: fd) { [unowned self] in self.readable() }
        } catch {
            connection.close()
            throw error
        }
        self.connection = connection
        headerBytes = 0
        dataBytes = 0
        replyPages = 0
        sentCount = 0
        partialBytes = 0
        lastProgress = monotonicNanoseconds()
        logger.info("connected to the page server", metadata: [
            "server": "\(options.serverName)", "resending": "\(queue.count - queueHead)", "tls": "\(options.tls != nil)",
        ])
        flush()
    }

    private func backoff() -> Double {
        min(30, options.retryDelay * Double(1 << min(20, max(0, failures - 1))))
    }

    /// The connection failed in a way a reconnect may cure: drop it and schedule the next attempt (or give up).
    private func connectionLost(_ reason: String) {
        guard let connection else { return }
        engine?.unwatch(descriptor: connection.descriptor)
        connection.close()
        self.connection = nil
        lastError = reason
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        if let inherited = options.inheritedSocket {
            return giveUp("the page-server connection inherited with --ps-socket \(inherited) failed (\(lastError)): it cannot be opened again")
        }
        failures += 1
        guard failures <= options.retries else {
            return giveUp("page server \(options.serverName): gave up after \(options.retries) retries (last error: \(lastError))")
        }
        let delay = backoff()
        logger.warning("page server connection lost; reconnecting", metadata: [
            "server": "\(options.serverName)", "reason": "\(lastError)", "attempt": "\(failures)",
            "of": "\(options.retries)", "delay": "\(delay)", "outstanding": "\(queue.count - queueHead)",
        ])
        reconnectAt = monotonicNanoseconds() + UInt64(delay * 1e9)
    }

    private func giveUp(_ reason: String) {
        finished = true
        reconnectAt = nil
        if let connection {
            engine?.unwatch(descriptor: connection.descriptor)
            connection.close()
            self.connection = nil
        }
        logger.error("remote pages unavailable", metadata: ["server": "\(options.serverName)", "reason": "\(reason)"])
        engine?.failRemotePages(reason)
    }

    private func timerFired() {
        timer?.acknowledge()
        guard !finished else { return }
        let now = monotonicNanoseconds()
        if connection == nil {
            guard let at = reconnectAt, now >= at else { return }
            reconnectAt = nil
            do {
                try connect()
            } catch let error as PageServerError where error.kind == .configuration {
                giveUp("\(error)")
            } catch {
                lastError = "\(error)"
                scheduleReconnect()
            }
            return
        }
        flush()
        if queue.count > queueHead, now - lastProgress > UInt64(options.stallTimeout * 1e9) {
            connectionLost("no answer completed for \(options.stallTimeout) s with \(queue.count - queueHead) requests "
                + "outstanding (a stalled or too slow source)")
        }
    }

    // MARK: Sending

    /// Writes every queued request that fits into the socket buffer, up to `requestsPerSend` of them per `send`
    /// (with TLS: per record).
    private func flush() {
        guard let connection else { return }
        if connection.hasPendingOutput {
            switch connection.flush() {
            case .done: break
            case .wouldBlock: return  // the timer tries again
            case .closed: return connectionLost("the server closed the connection")
            case .failed(let reason), .refused(let reason): return connectionLost("sending a request failed: \(reason)")
            }
        }
        let size = PageServerMessage.size
        while queueHead + sentCount < queue.count {
            // The unsent requests from the next one (partly written: `partialBytes` of it are out), encoded in a row.
            let first = queueHead + sentCount
            let count = min(queue.count - first, requestsPerSend)
            if sendBuffer.count < count * size { sendBuffer = [UInt8](repeating: 0, count: count * size) }
            sendBuffer.withUnsafeMutableBytes { bytes in
                for k in 0..<count {
                    queue[first + k].message.encode(into: UnsafeMutableRawBufferPointer(rebasing: bytes[(k * size)..<((k + 1) * size)]))
                }
            }
            let total = count * size
            let result = sendBuffer.withUnsafeBytes { connection.send($0.baseAddress! + partialBytes, total - partialBytes) }
            switch result {
            case .done(let n):
                let written = partialBytes + n
                sentCount += written / size
                partialBytes = written % size
            case .wouldBlock: return  // the timer tries again
            case .closed: return connectionLost("the server closed the connection")
            case .failed(let reason), .refused(let reason): return connectionLost("sending a request failed: \(reason)")
            }
        }
    }

    /// Requests written together at most: 512 (16 KiB) on a plain socket; with TLS one per record, which measured
    /// faster than many in one record (issue 14, BENCHMARKS.md).
    private var requestsPerSend: Int { options.tls == nil ? 512 : 1 }
    private var sendBuffer: [UInt8] = []

    // MARK: Receiving

    private func readable() {
        while let connection {
            guard queueHead < queue.count, sentCount > 0 else {
                return drainUnexpected(connection)
            }
            switch receiveAnswer(connection) {
            case .partial: continue
            case .wouldBlock: return
            case .answered(let outstanding, let pages): complete(outstanding, pages: pages)
            case .closed: return connectionLost("the server closed the connection")
            case .refused(let reason): return giveUp("page server \(options.serverName) refused us: \(reason)")
            case .failed(let reason): return connectionLost("receiving failed: \(reason)")
            case .brokeProtocol(let error):
                return giveUp("page server \(options.serverName) broke the protocol: \(error)")
            }
        }
    }

    private enum AnswerStep {
        case partial, wouldBlock, closed
        case answered(Outstanding, pages: Int)
        case refused(String), failed(String), brokeProtocol(any Error)
    }

    /// Receives the next piece of the answer to the oldest request written (`queue[queueHead]`, which must exist):
    /// its header, then its pages into `buffer`. `.answered` when the answer is whole (the caller completes it).
    private func receiveAnswer(_ connection: TCPConnection) -> AnswerStep {
        let outstanding = queue[queueHead]
        let result: TCPConnection.IO
        if headerBytes < PageServerMessage.size {
            result = header.withUnsafeMutableBytes {
                connection.receive($0.baseAddress! + headerBytes, $0.count - headerBytes)
            }
        } else {
            result = connection.receive(buffer + dataBytes, replyPages * basePageSize - dataBytes)
        }
        let n: Int
        switch result {
        case .done(let count): n = count
        case .wouldBlock: return .wouldBlock
        case .closed: return .closed
        case .refused(let reason): return .refused(reason)
        case .failed(let reason): return .failed(reason)
        }
        if headerBytes < PageServerMessage.size {
            headerBytes += n
            guard headerBytes == PageServerMessage.size else { return .partial }
            let reply = PageServerMessage(decoding: header)
            do {
                replyPages = try validateReply(reply, to: outstanding.message)
            } catch {
                return .brokeProtocol(error)
            }
            if replyPages * basePageSize > bufferSize {
                buffer.deallocate()
                bufferSize = replyPages * basePageSize
                buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: basePageSize)
            }
            dataBytes = 0
            return .partial
        }
        dataBytes += n
        guard dataBytes == replyPages * basePageSize else { return .partial }
        return .answered(outstanding, pages: replyPages)
    }

    private func complete(_ outstanding: Outstanding, pages: Int) {
        queueHead += 1
        sentCount -= 1
        if !outstanding.request.urgent { backgroundPages -= outstanding.request.pageCount }
        if queueHead > 64 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        headerBytes = 0
        dataBytes = 0
        replyPages = 0
        failures = 0
        lastProgress = monotonicNanoseconds()
        engine?.remotePagesArrived(outstanding.request, pageCount: pages, bytes: UnsafeRawPointer(buffer))
        flush()
    }

    /// Bytes arrived with no request written: a server speaking out of turn.
    private func drainUnexpected(_ connection: TCPConnection) {
        var byte: UInt8 = 0
        switch connection.receive(&byte, 1) {
        case .wouldBlock: return
        case .closed: return connectionLost("the server closed the connection")
        case .refused(let reason): giveUp("page server \(options.serverName) refused us: \(reason)")
        case .failed(let reason): connectionLost("receiving failed: \(reason)")
        case .done: giveUp("page server \(options.serverName) broke the protocol: it sent data nobody asked for")
        }
    }
}
