import LinuxSupport
import Logging
import Synchronization
import SystemPackage
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// The monitor of one restore: one event loop, on one thread, over every uffd of the restored process tree, the
/// front end's descriptors, and a wake-up eventfd.
///
/// It serves page faults from the first uffd on, follows fork/mremap/madvise/munmap, copies the remaining pages in
/// the background once every task is announced, and returns when every tracked process has all its pages or has
/// exited. Everything except `cancel(reason:)` and `statistics` must be called on the loop's thread (front-end
/// handlers registered with `watch` run there).
public final class RestoreEngine: @unchecked Sendable {
    public let statistics = RestoreStatistics()
    public let configuration: EngineConfiguration
    /// Told about every uffd the engine adopts and every process it retires (on the loop thread). Set before `run`.
    public var observer: (any RestoreObserver)?
    /// The record a successor daemon continues this restore from (`RestoreJournal`): every task, fork, layout
    /// change and retirement is recorded, and events are read into its read area (so a daemon killed between a read
    /// and its record leaves what it read to its successor). Set before the first `addTask` (or by `adopt`).
    public var journal: RestoreJournal? {
        didSet {
            guard let journal else { return }
            batch = EventBatch(readingInto: journal.uffdMessages, capacity: RestoreJournal.uffdMessagesCapacity)
        }
    }
    let logger: Logger

    private let epoll: Epoll
    private let wakeUp: WakeUpEvent
    private var batch = EventBatch(capacity: 64)
    /// The one reading of copy outcomes (`settle`).
    let copyPolicy: CopyPolicy
    private(set) var processes: [Int: TrackedProcess] = [:]
    /// Counts served faults; each process remembers the count at its last fault, so the fill can follow the faults.
    var faultClock: UInt64 = 0
    /// Pages of the next background copy (between `fillChunkPages` and `fillChunkMaxPages`), and the fault clock
    /// when it was last grown: it grows while no fault is served and resets on a fault.
    var fillChunkNow = 0
    var fillChunkClock: UInt64 = 0
    /// When (monotonic ns) the latest fault was served: the loop polls instead of sleeping for a while after it.
    var lastFaultAt: UInt64 = 0
    /// Which process the background fill serves next (kept incrementally: no scan of every process per chunk).
    var fillOrder = FillOrder()
    /// How many processes wait for an event before a refused copy can be retried.
    private let awaitingTally = AwaitingTally()
    var nextID = 1
    /// For an adopted restore: when (CLOCK_MONOTONIC ns) the predecessor's guardian saw its daemon die; cleared
    /// once the first page is served after the hand-over (logged with the pause the processes saw).
    var handoverDiedAt: UInt64 = 0
    /// When (CLOCK_MONOTONIC ns) `probeLiveness` last ran (without a background fill it runs every
    /// `livenessProbeMilliseconds`).
    private var lastLivenessProbeAt: UInt64 = 0
    /// Engine ids given to forked children when their events were recorded, before the events are applied.
    private var reservedChildIDs: [Int] = []
    private var watchers: [Int32: () -> Void] = [:]
    private(set) var allAnnounced = false
    /// Children tracked while a batch was being read: checked for completion once the batch is done (a child
    /// forked with nothing pending would otherwise wait forever: its uffd may never become readable).
    private var newborns: [TrackedProcess] = []
    private var outcome: RestoreOutcome?
    /// Uffds the engine could not track (a bound was reached) but must not close: closing would hand their
    /// process zero pages. They stay open as long as the engine lives.
    private var untracked: [Userfaultfd] = []
    private let cancelReason = CancelReason()
    private let inbox = Mutex<[@Sendable (RestoreEngine) -> Void]>([])
    let zeroSource = ZeroSource()
    /// Pages fetched from a remote source, when there is one (`useRemotePages`).
    var remote: RemoteFetches?
    /// Working-set profiles: the recorder and the pages to deliver first (`RestoreEngine+Prefetch.swift`).
    let workingSet = WorkingSetPrefetch()

    /// Fault injection for the hand-over tests (`LP_FAULT_STOP_BEFORE_RECORDING_EVENT=N`): the daemon stops with
    /// SIGSTOP between reading its Nth event (1: the first) and recording it; the test then kills it, and the
    /// successor must find the event in the journal's read area.
    private static let stopBeforeRecordingEvent: Int = {
        guard let value = getenv("LP_FAULT_STOP_BEFORE_RECORDING_EVENT") else { return 0 }
        return max(1, Int(String(cString: value)) ?? 1)
    }()
    private var eventsRecorded = 0

    private static let wakeUpTag: UInt64 = 0
    private static let watcherTagBit: UInt64 = 1 << 40

    public init(configuration: EngineConfiguration = EngineConfiguration(), logger: Logger) throws {
        self.configuration = configuration
        copyPolicy = CopyPolicy(configuration)
        self.logger = logger
        epoll = try Epoll()
        wakeUp = try WakeUpEvent()
        try epoll.add(wakeUp.descriptor, tag: Self.wakeUpTag)
    }

    // MARK: What the front end tells the engine

    /// A task of the restore handed over its uffd. Faults on it are served from now on.
    public func addTask(imagePid: Int32, uffd: Userfaultfd, space: AddressSpace) throws {
        statistics.markStarted()
        statistics.add(.tasksAnnounced)
        statistics.add(.pagesExpected, space.pendingPages * space.basePagesPerPage)
        let process = try track(imagePid: imagePid, parentID: nil, uffd: uffd, space: space)
        journal?.record(.task(process: process.id, imagePid: imagePid, uffd: uffd.descriptor))
        observer?.taskAdded(id: process.id, imagePid: imagePid, uffd: uffd.descriptor)
        if remote?.failure != nil { return abandon(process) }
        queuePrefetch(for: process)
        logger.info("task announced", metadata: [
            "pid": "\(imagePid)", "uffd": "\(uffd.descriptor)", "pages": "\(space.pendingPages)",
            "ranges": "\(space.extents.count)", "process": "\(process.id)",
        ])
    }

    /// A zombie task (negative pid on CRIU's socket): nothing to serve.
    public func addZombie(pid: Int32) {
        statistics.markStarted()
        statistics.add(.tasksAnnounced)
        journal?.record(.zombie(pid: pid))
        logger.info("zombie announced", metadata: ["pid": "\(pid)"])
    }

    /// Every task is announced (CRIU's `RSTF`): the background fill may start, and the restore ends when every
    /// tracked process is complete.
    public func allTasksAnnounced() {
        if !allAnnounced { journal?.record(.allAnnounced) }
        allAnnounced = true
        if let failure = remote?.failure { return fail(failure) }
        logger.info("all tasks announced", metadata: ["processes": "\(processes.count)"])
        resumeHeldPrefetches()
        for process in processes.values { process.fillHeld = false }
        for process in Array(processes.values) { retireIfComplete(process) }
    }

    /// Every task of the restore has exited (the front end learned it, e.g. from a pidfd): stop serving them. The
    /// restore then completes once every task is announced.
    public func tasksExited(detail: String) {
        for process in Array(processes.values) { retire(process, .exited, detail: detail) }
    }

    /// Ends the restore with an error (e.g. the restorer hung up before `RSTF`).
    public func fail(_ reason: String) {
        if outcome == nil {
            journal?.markFailed()
            outcome = .failed(reason: reason)
            logger.error("restore failed", metadata: ["reason": "\(reason)"])
        }
    }

    /// Calls `handler` on the loop thread whenever `descriptor` is readable.
    public func watch(descriptor: Int32, handler: @escaping () -> Void) throws {
        try epoll.add(descriptor, tag: Self.watcherTagBit | UInt64(UInt32(bitPattern: descriptor)))
        watchers[descriptor] = handler
    }

    public func unwatch(descriptor: Int32) {
        epoll.remove(descriptor)
        watchers[descriptor] = nil
    }

    /// Asks the loop to stop; safe from any thread.
    public func cancel(reason: String) {
        cancelReason.set(reason)
        wakeUp.signal()
    }

    /// Runs `work` on the loop's thread, soon; safe from any thread.
    public func execute(_ work: @escaping @Sendable (RestoreEngine) -> Void) {
        inbox.withLock { $0.append(work) }
        wakeUp.signal()
    }

    /// After `run()` returned: closes the uffd of every process still tracked. The kernel then unregisters their
    /// ranges and zero-fills whatever they touch next, so call it only when that is right (the processes are gone,
    /// or were killed) — or when the alternative is worse: a process whose uffd stays open but unread blocks forever
    /// in its next fork/mremap/madvise/munmap.
    public func closeAll() {
        for process in Array(processes.values) { retire(process, .exited, detail: "closed after the restore ended") }
    }

    /// After `run()` returned, when nothing could end the processes still waiting (their guardian is gone): gives up
    /// every uffd still held without closing it. The descriptors stay open as long as this process lives, so those
    /// processes stay blocked on their faults rather than read zero pages.
    public func leaveUffdsOpen() { _ = relinquishUffds() }

    /// Gives up every uffd held without closing it and returns them (the caller now owns them): as
    /// `leaveUffdsOpen`, and for a restore that fails while being taken over, before it ran (`AdoptionAbandoned`:
    /// its processes are ended first, the uffds closed after).
    public func relinquishUffds() -> [Int32] {
        (processes.values.map { $0.uffd.release() } + untracked.map { $0.release() }).filter { $0 >= 0 }.sorted()
    }

    /// Processes tracked right now (announced tasks and forked children, minus the retired).
    public var trackedProcessCount: Int { processes.count }

    // MARK: The loop

    /// Runs the loop on the calling thread until the restore completes, fails or is cancelled.
    public func run() -> RestoreOutcome {
        while outcome == nil {
            if allAnnounced && processes.isEmpty {
                outcome = .completed
                break
            }
            let prefetchWaiting = hasPrefetchWork
            // Early (before RSTF) only from local data: a remote answer arriving for a range not registered yet
            // would be dropped, where the early local fill can hold the process (`fill`).
            let early = configuration.fillBeforeAllTasksAnnounced && remote == nil
            let filling = configuration.backgroundFill && (allAnnounced || early)
            let fillWaiting = prefetchWaiting || (filling && hasFillWork)
            let probing = allAnnounced && !configuration.backgroundFill && !processes.isEmpty
            let awaiting = awaitingTally.count > 0
            let timeout: Int32 =
                fillWaiting ? 0
                : awaiting ? configuration.refusedCopyRetryMilliseconds
                : probing ? configuration.livenessProbeMilliseconds : -1
            let ready = waitForWork(timeout: timeout)
            if ready == 0 {
                if awaiting {
                    retryDeferredFaults(olderThan: fillWaiting ? configuration.busyRetryMicroseconds * 1000 : 0)
                }
                if prefetchWaiting { prefetchOneChunk() } else if fillWaiting { fillOneChunk() }
            }
            // By the clock, not only when the wait timed out: a descriptor that is readable more often than the
            // probe's period (a page-server client's 250 ms timer) would otherwise starve it, and a process that
            // exited with pages pending would never be noticed.
            if probing && !awaiting {
                let now = monotonicNanoseconds()
                if lastLivenessProbeAt == 0 { lastLivenessProbeAt = now }  // the first period starts now
                if ready == 0 || now &- lastLivenessProbeAt >= UInt64(configuration.livenessProbeMilliseconds) * 1_000_000 {
                    lastLivenessProbeAt = now
                    probeLiveness()
                }
            }
        }
        let result = outcome ?? .completed
        statistics.markFinished()
        logger.info("restore finished", metadata: ["outcome": "\(result)", "statistics": "\(statistics.snapshot)"])
        return result
    }

    /// `epoll_wait` for `timeout` ms — but for up to `spinAfterFaultMicroseconds` after the latest fault, polling
    /// without sleeping first: a process that just faulted is likely to fault again soon, and a sleeping loop is
    /// woken by a cross-CPU interrupt (tens of µs here) where a polling one sees the fault at once. Idle, it sleeps.
    private func waitForWork(timeout: Int32) -> Int {
        let spin = UInt64(configuration.spinAfterFaultMicroseconds) * 1000
        if timeout != 0 && spin > 0 && lastFaultAt > 0 {
            let until = lastFaultAt &+ spin
            while monotonicNanoseconds() < until {
                let ready = epoll.wait(timeout: 0) { tag, _ in dispatch(tag) }
                if ready > 0 { return ready }
            }
        }
        return epoll.wait(timeout: timeout) { tag, _ in dispatch(tag) }
    }

    private func dispatch(_ tag: UInt64) {
        if tag == Self.wakeUpTag {
            wakeUp.reset()
            for work in inbox.withLock({ items in defer { items.removeAll() }; return items }) { work(self) }
            if let reason = cancelReason.get(), outcome == nil {
                journal?.markFailed()
                outcome = .cancelled(reason: reason)
            }
        } else if tag & Self.watcherTagBit != 0 {
            let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: tag))
            watchers[fd]?()
        } else if let process = processes[Int(tag)] {
            service(process)
        }
    }

    // MARK: Processes

    @discardableResult
    func track(imagePid: Int32, parentID: Int?, uffd: Userfaultfd, space: AddressSpace, id: Int? = nil) throws
        -> TrackedProcess
    {
        guard processes.count < configuration.maxTrackedProcesses else {
            throw LimitError(
                "this restore already tracks \(processes.count) processes, the most one restore may "
                    + "(maxTrackedProcesses); refusing the uffd of pid \(imagePid)")
        }
        let process = TrackedProcess(id: id ?? nextID, imagePid: imagePid, parentID: parentID, uffd: uffd,
                                     space: space, awaitingTally: awaitingTally)
        if id == nil { nextID += 1 }
        fillOrder.tracked(process)
        try epoll.add(uffd.descriptor, tag: UInt64(process.id))
        processes[process.id] = process
        return process
    }

    enum Retirement: String { case completed, exited }

    /// Stops serving `process`. Its uffd is closed (the kernel zero-fills whatever it touches next), unless
    /// `holdingUffd`: then it stays open as long as the engine lives, so that threads touching a page that must not
    /// read zeros wait instead (until the failed restore's processes are killed).
    func retire(_ process: TrackedProcess, _ why: Retirement, detail: String = "", holdingUffd: Bool = false) {
        guard !process.retired else { return }
        process.retired = true
        process.awaitingEvents = false
        observer?.processRetired(id: process.id)
        journal?.record(.retired(process: process.id))
        epoll.remove(process.uffd.descriptor)
        if holdingUffd { untracked.append(process.uffd) } else { process.uffd.close() }
        processes[process.id] = nil
        statistics.add(why == .completed ? .processesCompleted : .processesExited)
        if why == .exited && process.parentID == nil {
            statistics.add(.pagesAbandoned, process.space.pendingPages * process.space.basePagesPerPage)
        }
        logger.debug("process retired", metadata: [
            "process": "\(process.id)", "pid": "\(process.imagePid)", "why": "\(why.rawValue)",
            "pending": "\(process.space.pendingPages)", "detail": "\(detail)",
        ])
    }

    /// Once every task is announced, a process with nothing left to deliver is done: read what is queued one
    /// last time (a fork may be waiting), then close its uffd — the kernel zero-fills anything it still touches,
    /// which is exactly what an address without image data must read.
    func retireIfComplete(_ process: TrackedProcess) {
        guard configuration.retireCompletedProcesses, allAnnounced, !process.retired, process.space.isComplete,
              process.deferredFaults.isEmpty,
              process.parkedFaults.isEmpty
        else { return }
        drainEvents(process)
        serveQueuedFaults(process)
        if !process.retired && process.space.isComplete && process.deferredFaults.isEmpty {
            retire(process, .completed)
        }
    }

    // MARK: Messages

    /// Reads everything queued on the process's uffd: applies events at once, queues faults, then serves them.
    private func service(_ process: TrackedProcess) {
        let applied = drainEvents(process)
        if process.awaitingEvents && applied > 0 {
            process.awaitingEvents = false
            process.queuedFaults.append(contentsOf: process.deferredFaults)
            process.deferredFaults.removeAll(keepingCapacity: true)
        }
        serveQueuedFaults(process)
        retireIfComplete(process)
    }

    /// Reads every queued message. Non-cooperative events are applied immediately (so the removes and unmaps of a
    /// batch take effect before its faults are served); faults are queued. Returns the number of events applied.
    @discardableResult
    func drainEvents(_ process: TrackedProcess) -> Int {
        var applied = 0
        while !process.retired {
            let count: Int
            // With a journal the batch is its read area: from here until what this read returns is recorded (right
            // after the read, before anything is applied), a daemon killed leaves the messages the kernel handed it
            // there, and the successor records what this one did not (`RestoreJournal.completeInterruptedRead`).
            // The slots are zeroed before the read is noted, so they never hold an older read's messages then.
            var marked = false
            if let journal {
                batch.clear()
                journal.beginUffdRead(process: process.id)
                marked = true
            }
            defer { if marked { journal?.endUffdRead() } }
            do {
                count = try batch.read(from: process.uffd)
            } catch .systemCall(_, let errno) where errno == .tooManyOpenFiles || errno == .tooManyOpenFilesInSystem {
                // A fork event whose child uffd cannot be installed: the kernel keeps the event queued (the forking
                // thread waits). Retiring the process here would close its uffd and hand it zero pages: fail the
                // restore instead (the guardian kills its processes).
                fail("out of file descriptors reading the events of pid \(process.imagePid) (a forked child's uffd "
                     + "could not be installed: \(errno)); raise RLIMIT_NOFILE (ulimit -n) of lazy-pagesd")
                break
            } catch {
                retire(process, .exited, detail: "\(error)")
                break
            }
            if let journal {
                record(count, eventsOf: process, in: journal)
                journal.endUffdRead()
                marked = false
            }
            for i in 0..<count {
                switch batch[i] {
                case .success(.pageFault(let address, _, _)):
                    process.queuedFaults.append(address)
                case .success(let event):
                    apply(event, to: process)
                    applied += 1
                case .failure(let unknown):
                    logger.error("ignoring message", metadata: ["process": "\(process.id)", "error": "\(unknown)"])
                }
            }
            if count < batch.capacity { break }
        }
        if !newborns.isEmpty {
            let born = newborns
            newborns.removeAll()
            for child in born { retireIfComplete(child) }
        }
        return applied
    }

    /// Records the events among the first `count` messages of the batch, in order. A fork's child gets its engine id
    /// here (`reservedChildIDs`, taken by `apply` in the same order).
    private func record(_ count: Int, eventsOf process: TrackedProcess, in journal: RestoreJournal) {
        for i in 0..<count {
            guard case .success(let event) = batch[i] else { continue }
            if case .pageFault = event { continue }
            eventsRecorded += 1
            if eventsRecorded == Self.stopBeforeRecordingEvent { raise(SIGSTOP) }
            var child = 0
            if case .fork = event {
                child = nextID
                nextID += 1
                reservedChildIDs.append(child)
            }
            if let entry = RestoreJournal.Entry(recording: event, of: process.id, child: child) {
                journal.record(entry)
            }
        }
    }

    private func apply(_ event: Event, to process: TrackedProcess) {
        switch event {
        case .fork(let childDescriptor):
            statistics.add(.forks)
            // The child has exactly the parent's missing pages at this moment: copies made before the event was
            // read landed in both, and the kernel refused every copy since the fork began.
            let uffd = Userfaultfd(adopting: childDescriptor)
            do {
                let reserved = reservedChildIDs.isEmpty ? nil : reservedChildIDs.removeFirst()
                let child = try track(imagePid: process.imagePid, parentID: process.id, uffd: uffd,
                                      space: process.space, id: reserved)
                child.fillCursor = process.fillCursor
                observer?.processForked(parent: process.id, child: child.id, uffd: uffd.descriptor)
                newborns.append(child)
                logger.debug("fork", metadata: [
                    "parent": "\(process.id)", "child": "\(child.id)", "pending": "\(child.space.pendingPages)",
                ])
            } catch {
                // Never close it: the kernel would zero-fill everything the child touches. Held open, the child
                // waits on its next fault until the failed restore's processes are killed (guardian, criu).
                untracked.append(uffd)
                fail("cannot watch the uffd of a forked child of pid \(process.imagePid): \(error)")
            }
        case .remap(let from, let to, let length):
            statistics.add(.remaps)
            process.space.remap(from: from, to: to, length: length)
        case .remove(let start, let end):
            statistics.add(.removes)
            process.space.remove(start, end)
        case .unmap(let start, let end):
            statistics.add(.unmaps)
            process.space.unmap(start, end)
        case .pageFault:
            break
        }
    }
}

/// A bound of `EngineConfiguration` was reached; the message names it.
public struct LimitError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// A cancel request handed from any thread to the loop.
private final class CancelReason: Sendable {
    private let reason = Mutex<String?>(nil)
    func set(_ value: String) { reason.withLock { if $0 == nil { $0 = value } } }
    func get() -> String? { reason.withLock { $0 } }
}

extension AddressSpace {
    /// How many base pages (`basePageSize`) one page of this space is: the factor from its pages to the statistics' pages.
    var basePagesPerPage: Int { pageSize / basePageSize }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
