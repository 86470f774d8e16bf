import Userfaultfd

/// One process (or forked child) of a restore: its uffd and what it still needs.
final class TrackedProcess {
    /// Engine-wide identifier, also the epoll tag.
    let id: Int
    /// The image pid its pages are read under (a forked child reads under its ancestor's, as CRIU does).
    let imagePid: Int32
    /// The engine id of the process whose fork created this one, if any.
    let parentID: Int?
    let uffd: Userfaultfd
    var space: AddressSpace
    /// Where the background fill continues.
    var fillCursor: UInt64 = 0
    /// The engine's fault count at this process's latest fault (0: never faulted); the fill prefers recent faulters.
    var lastFault: UInt64 = 0
    /// The page of this process's latest fault (0: none yet): a fault just after it means the process is reading
    /// forwards, and the fill jumps ahead of it.
    var lastFaultPage: UInt64 = 0
    /// When (monotonic ns) a copy was last refused with nothing to read (`awaitingEvents`): paces the retries.
    var refusedAt: UInt64 = 0
    /// Faults read but not yet served (a batch, plus faults read while draining events).
    var queuedFaults: [UInt64] = []
    /// Faults whose copy the kernel refused (EAGAIN) before the event that caused it was readable.
    var deferredFaults: [UInt64] = []
    /// True while a copy was refused and the event behind it has not been read yet.
    var awaitingEvents = false {
        didSet { if awaitingEvents != oldValue { awaitingTally.count += awaitingEvents ? 1 : -1 } }
    }
    /// The engine's count of processes with `awaitingEvents` set (so its loop need not scan every process).
    private let awaitingTally: AwaitingTally
    /// Copies refused with ENOMEM in a row (the target's memory cgroup at its limit).
    var memoryRefusals = 0
    /// Faulting pages (runtime addresses) waiting for remote pages in flight.
    var parkedFaults: [UInt64] = []
    /// True while the background fill has nothing to ask a remote source for (everything pending is in flight, or
    /// the source takes no more background requests); cleared whenever remote pages arrive.
    var fillWaitsForRemote = false
    /// Dump addresses of a working-set profile to deliver before the background fill, and how many were handled.
    var prefetchQueue: [UInt64] = []
    var prefetchCursor = 0
    /// True while its prefetch waits for `RSTF` (a copy found a range not registered yet).
    var prefetchHeld = false
    /// True while its background fill waits for `RSTF` (an early fill found a range not registered yet).
    var fillHeld = false
    /// Set once the process has been retired (completed, exited, or failed).
    var retired = false

    /// A copy was refused (EAGAIN) and no event was readable yet: hold copies until the event is read or the retry
    /// delay has passed.
    func copiesRefused() {
        awaitingEvents = true
        refusedAt = monotonicNanoseconds()
    }

    init(id: Int, imagePid: Int32, parentID: Int?, uffd: Userfaultfd, space: AddressSpace,
         awaitingTally: AwaitingTally = AwaitingTally())
    {
        self.id = id
        self.awaitingTally = awaitingTally
        self.imagePid = imagePid
        self.parentID = parentID
        self.uffd = uffd
        self.space = space
    }
}

/// How many tracked processes wait for an event to be read (`TrackedProcess.awaitingEvents`), kept up to date by
/// the processes themselves.
final class AwaitingTally {
    var count = 0
}
