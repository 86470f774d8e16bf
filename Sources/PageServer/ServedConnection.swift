import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// One client of the page server: the state the event loop keeps between readiness events. A connection is in one
/// phase at a time, so requests are answered strictly in order and a pipelining client gets its replies in its
/// order: the next header is read only once the previous reply is fully handed to the socket.
final class ServedConnection {
    enum Phase {
        /// TLS handshake (then the client's certificate check).
        case handshake
        /// Reading a 32-byte request header.
        case request
        /// Sending a reply (`small`: a reply header or a close status, then `fileLeft` bytes of page data).
        case reply
        /// Our side is shut; what the client still sends is read and dropped (so the replies already sent are not
        /// lost to a reset), for at most a second.
        case closing
    }

    let connection: TCPConnection
    var log: Logger
    var phase: Phase
    /// The epoll events asked for now.
    var interest: UInt32

    var header = [UInt8](repeating: 0, count: PageServerMessage.size)
    var headerBytes = 0

    var small: [UInt8] = []
    var smallSent = 0
    var file: Int32 = -1
    var fileOffset: off_t = 0
    var fileLeft = 0
    var closeAfterReply = false
    /// The client sent `PS_IOV_CLOSE` or `PS_IOV_FORCE_CLOSE`: it ended the session on purpose.
    var closedSession = false
    /// The client went away (the connection ended or broke on its side) without closing the session: in a single
    /// session, a restarted lazy-pagesd may come back to it (`PageServerLimits.sessionReturnTimeout`).
    var wentAway = false
    /// Why this connection is ended by us, or broke (nil: the client ended it at a request boundary); the outcome of
    /// a single session.
    var failure: String?

    /// When the phase's clock started: the accept (handshake), the end of the last reply (idle), the first byte of
    /// the current request (request and reply), the shutdown (closing).
    var since: ContinuousClock.Instant
    var requestStarted: ContinuousClock.Instant?

    init(connection: TCPConnection, logger: Logger, phase: Phase, now: ContinuousClock.Instant) {
        self.connection = connection
        log = logger
        log[metadataKey: "client"] = "\(connection.peer)"
        self.phase = phase
        interest = Epoll.readable
        since = now
    }

    /// When this connection must have moved on, and what it failed to do by then; nil when it may wait forever.
    func deadline(_ limits: PageServerLimits) -> (at: ContinuousClock.Instant, what: String)? {
        func after(_ seconds: Double, _ from: ContinuousClock.Instant) -> ContinuousClock.Instant {
            from + .milliseconds(Int64(seconds * 1000))
        }
        switch phase {
        case .handshake:
            return (after(limits.requestTimeout, since), "no TLS handshake within \(limits.requestTimeout) s")
        case .request, .reply:
            if let started = requestStarted {
                return (after(limits.requestTimeout, started), "a request not completed within \(limits.requestTimeout) s")
            }
            guard limits.idleTimeout > 0 else { return nil }
            return (after(limits.idleTimeout, since), "no request for \(limits.idleTimeout) s")
        case .closing:
            return (after(1, since), "")
        }
    }
}
