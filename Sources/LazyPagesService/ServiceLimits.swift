/// The bounds the service enforces on its clients.
public struct ServiceLimits: Sendable {
    /// Jobs one uid may have that have not ended yet.
    public var activeJobsPerUID = 64
    /// Ended jobs kept for `list`/`status`/`wait`; the oldest are forgotten first.
    public var finishedJobsKept = 256
    /// Control connections open at once.
    public var connections = 256
    /// How long (seconds) a reply may wait for the client to read: a client that stops reading its replies is
    /// disconnected rather than holding a connection thread forever.
    public var replyTimeoutSeconds = 10
    /// Processes (uffds) one job may track, tasks and forked children together.
    public var uffdsPerJob = 16_384

    public init() {}
}
