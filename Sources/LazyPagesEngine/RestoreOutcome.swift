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
