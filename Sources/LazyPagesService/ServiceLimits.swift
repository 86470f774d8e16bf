/// The bounds the service enforces on its clients.
public struct ServiceLimits: Sendable {
    /// Jobs one uid may have that have not ended yet.
    public var activeJobsPerUID = 64
    /// Ended jobs kept for `list`/`status`/`wait`; the oldest are forgotten first.
    public var finishedJobsKept = 256
    /// Control connections open at once (connections inside a `wait` are not counted: see `waitsPerUID`).
    public var connections = 256
    /// Control connections one non-root uid may have open at once (outside `wait`), so that no group member can
    /// take every slot. Root is bound only by `connections`.
    public var connectionsPerUID = 16
    /// Connections of one non-root uid that may be inside a `wait` at once. A waiting connection leaves the
    /// connection counts while it waits (it is waiting on the daemon, not idle) and counts here instead.
    public var waitsPerUID = 64
    /// How long (seconds) a control connection may send nothing (outside a `wait`) before it is closed.
    public var idleTimeoutSeconds = 60
    /// How long (seconds) a reply may wait for the client to read: a client that stops reading its replies is
    /// disconnected rather than holding a connection thread forever.
    public var replyTimeoutSeconds = 10
    /// Processes (uffds) one job may track, tasks and forked children together.
    public var uffdsPerJob = 16_384

    public init() {}
}
