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

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var serverName: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
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
        if queue.count - queueHead == 1 { lastProgress = monotonicNanoseconds() }
        flush()
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
        let bytes = PageServerMessage(cmd: PageServerCommand.close).bytes
        var sent = 0
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
            // reset by peer"). Read up to it (as CRIU's own client does, gnutls_bye with SHUT_RDWR).
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
        let fd = try TCPSocket.connect(host: options.host, port: options.port, timeoutSeconds: timeout)
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

    /// Writes every queued request that fits into the socket buffer (with TLS: each request one record).
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
        var scratch = [UInt8](repeating: 0, count: PageServerMessage.size)
        while queueHead + sentCount < queue.count {
            queue[queueHead + sentCount].message.encodeBytes(into: &scratch)
            let result = scratch.withUnsafeBytes { connection.send($0.baseAddress! + partialBytes, $0.count - partialBytes) }
            switch result {
            case .done(let n):
                partialBytes += n
                if partialBytes == PageServerMessage.size {
                    partialBytes = 0
                    sentCount += 1
                }
            case .wouldBlock: return  // the timer tries again
            case .closed: return connectionLost("the server closed the connection")
            case .failed(let reason), .refused(let reason): return connectionLost("sending a request failed: \(reason)")
            }
        }
    }

    // MARK: Receiving

    private func readable() {
        while let connection {
            guard queueHead < queue.count, sentCount > 0 else {
                return drainUnexpected(connection)
            }
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
            case .wouldBlock: return
            case .closed: return connectionLost("the server closed the connection")
            case .refused(let reason): return giveUp("page server \(options.serverName) refused us: \(reason)")
            case .failed(let reason): return connectionLost("receiving failed: \(reason)")
            }
            if headerBytes < PageServerMessage.size {
                headerBytes += n
                guard headerBytes == PageServerMessage.size else { continue }
                let reply = PageServerMessage(decoding: header)
                do {
                    replyPages = try validateReply(reply, to: outstanding.message)
                } catch {
                    return giveUp("page server \(options.serverName) broke the protocol: \(error)")
                }
                if replyPages * basePageSize > bufferSize {
                    buffer.deallocate()
                    bufferSize = replyPages * basePageSize
                    buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: basePageSize)
                }
                dataBytes = 0
            } else {
                dataBytes += n
                guard dataBytes == replyPages * basePageSize else { continue }
                complete(outstanding, pages: replyPages)
            }
        }
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

extension PageServerMessage {
    func encodeBytes(into bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { encode(into: $0) }
    }
}
