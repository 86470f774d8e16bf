/// How a restore ended.
public enum RestoreOutcome: Sendable, Equatable {
    /// Every tracked process got all its pages or exited.
    case completed
    /// The restore was cancelled (`RestoreEngine.cancel()`); processes still waiting were released to the
    /// policy of the caller.
    case cancelled(reason: String)
    /// The front end or a page source failed; the message says what.
    case failed(reason: String)
}

/// What a whole restore (engine, front end, page source, guardian) came to, as the standalone daemon and a serve
/// job both report it.
public struct RestoreReport: Sendable {
    public var outcome: RestoreOutcome
    /// The end-of-restore line (`RestoreSummary`).
    public var summary: String
    /// The working-set profile recorded, when recording was asked for and the restore completed.
    public var profile: WorkingSetProfile?
    /// Set when the restore could not deliver every page and its processes were ended (SIGKILL) so that none runs
    /// on incomplete memory: says what was ended.
    public var processesEnded: String?

    public init(outcome: RestoreOutcome, summary: String, profile: WorkingSetProfile? = nil,
                processesEnded: String? = nil) {
        self.outcome = outcome
        self.summary = summary
        self.profile = profile
        self.processesEnded = processesEnded
    }
}

