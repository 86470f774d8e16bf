/// What one page server grants its clients, so that no client (or scanner) can hold it: at most `maxConnections`
/// at once (more are refused: accepted and closed at once, with a log line), an idle connection is closed after
/// `idleTimeout`, and a request (its header, its reply, or the TLS handshake) must be done within
/// `requestTimeout`. A reply carries at most `maxReplyPages` pages (CRIU's client never asks for more than 1 024;
/// every client takes a shorter reply and asks again for the rest).
public struct PageServerLimits: Sendable, Equatable {
    public var maxConnections = 256
    /// Seconds a connection may stay without a request (0: forever). A restore's client connects before
    /// `criu restore` runs and is then busy until its last page, so the default leaves it minutes.
    public var idleTimeout: Double = 600
    public var requestTimeout: Double = 60
    public var maxReplyPages: UInt64 = 1024
    /// A single session whose client went away without `PS_IOV_CLOSE` (its lazy-pagesd killed mid-restore): seconds
    /// the server listens again for the client's successor to continue the session; 0: the session ends at once,
    /// as CRIU's page server ends it.
    public var sessionReturnTimeout: Double = 30

    public init(maxConnections: Int = 256, idleTimeout: Double = 600, requestTimeout: Double = 60) {
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
    }
}
