import SystemPackage
import Userfaultfd

/// What a copy path does next after one range ioctl (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_POISON`), as
/// decided by `CopyPolicy.step`.
enum CopyStep: Equatable, Sendable {
    /// `pages` pages from the start of the run are home: no longer pending. `woken`: the ioctl itself woke the
    /// threads waiting on them; false when the first page was already present (filled by someone else), whose
    /// waiters still need `UFFDIO_WAKE` if the caller serves a fault on it.
    case delivered(pages: Int, woken: Bool)
    /// Queued events were read and applied: the same copy may succeed now (look the run up again: it may have moved,
    /// shrunk or gone).
    case retry
    /// The run may cross a VMA boundary, which one copy cannot: try again with at most `maxPages` pages.
    case shrink(maxPages: Int)
    /// The kernel refuses copies into this process for now (an event not readable yet, or its memory cgroup at its
    /// limit): wait for the event or the retry delay (`TrackedProcess.copiesRefused`).
    case refused
    /// The range no longer exists (and no event explains it): its pages are no longer pending.
    case dropped(Errno)
    /// The process is gone.
    case retired(Errno)
    /// The copy failed for good.
    case failed(Errno)
}

/// The one reading of a `CopyOutcome`, shared by every path that copies (fault, background fill, prefetch, remote
/// delivery, poisoning). Pure — no engine state, no statistics, safe on any thread: the caller supplies the only
/// effect a decision needs (reading the queued events of the target) and applies the step
/// (`RestoreEngine.settle`).
struct CopyPolicy: Sendable {
    /// ENOMEM refusals in a row retried like refused copies before one counts as a failure
    /// (`EngineConfiguration.memoryRefusalRetries`).
    var memoryRefusalRetries: Int

    init(_ configuration: EngineConfiguration) {
        memoryRefusalRetries = configuration.memoryRefusalRetries
    }

    /// The step after `outcome` of a copy of `pageCount` pages of `pageSize` bytes.
    ///
    /// - `drainEvents` reads and applies the target's queued events and returns how many it applied; called only
    ///   where an event may explain the outcome (EAGAIN, ENOENT).
    /// - `memoryRefusals` counts the target's ENOMEM refusals in a row (reset by a delivery).
    ///
    /// The rules: a delivery is a delivery (a present first page counts as one page, not woken). EAGAIN with nothing
    /// done means an event is queued: read it and retry, or wait for it. ENOENT/EINVAL after reading events may be
    /// the event's doing (retry); otherwise the run may span two VMAs (halve it towards its first page); a single
    /// page is gone. ESRCH: the process is gone. ENOMEM: the target's memory cgroup is at its limit and the OOM
    /// killer is often killing it right then (the next copy gets ESRCH), so wait like a refused copy, up to
    /// `memoryRefusalRetries` times in a row. Anything else fails.
    func step(after outcome: CopyOutcome, pageCount: Int, pageSize: Int, memoryRefusals: inout Int,
              drainEvents: () -> Int) -> CopyStep
    {
        switch outcome {
        case .done(let bytes), .partial(let bytes):
            memoryRefusals = 0
            return .delivered(pages: bytes / pageSize, woken: true)
        case .alreadyPresent:
            return .delivered(pages: 1, woken: false)
        case .retryAfterEvents:
            return drainEvents() > 0 ? .retry : .refused
        case .rangeGone(let errno):
            if drainEvents() > 0 { return .retry }
            return pageCount > 1 ? .shrink(maxPages: pageCount / 2) : .dropped(errno)
        case .processGone(let errno):
            return .retired(errno)
        case .failed(let errno):
            guard errno == .noMemory, memoryRefusals < memoryRefusalRetries else { return .failed(errno) }
            memoryRefusals += 1
            return .refused
        }
    }
}

/// Why the engine copied: which statistics a delivery counts in, and how a failure is worded.
enum CopyPurpose: Equatable, Sendable {
    case fault, fill, prefetch
    /// Pages a remote source sent: urgent ones were asked for by a fault.
    case remote(urgent: Bool)
    /// A zero page for a fault on an address with nothing pending (the run is not the space's).
    case zeroPage
    /// `UFFDIO_POISON` over pages that can never be delivered.
    case poison

    /// Whether the run is the space's pending pages (marked delivered or dropped by the step).
    var coversPendingPages: Bool { self != .zeroPage }

    func failure(_ run: AddressSpace.Run, pid: Int32, _ errno: Errno) -> String {
        let target = "\(run.length) bytes"
        let reason = copyFailure(errno)
        switch self {
        case .fault, .fill, .prefetch:
            return "copying \(target) to \(hex(run.address)) for pid \(pid) failed: \(reason)"
        case .remote:
            return "copying \(target) of remote pages to \(hex(run.address)) for pid \(pid) failed: \(reason)"
        case .zeroPage:
            return "zeroing \(target) at \(hex(run.address)) for pid \(pid) failed: \(reason)"
        case .poison:
            return "poisoning \(target) at \(hex(run.address)) for pid \(pid) failed: \(reason)"
        }
    }
}

extension RestoreEngine {
    /// Applies the copy policy to `outcome`, the result of an ioctl over `run` of `process` for `purpose`, on the
    /// loop thread: records the statistics, marks delivered pages, reads events, drops a gone range, retires a gone
    /// process, fails the restore. Returns the step, for the caller's loop to act on (wake, move a cursor, retry).
    func settle(_ outcome: CopyOutcome, of run: AddressSpace.Run, into process: TrackedProcess,
                for purpose: CopyPurpose) -> CopyStep
    {
        if case .retryAfterEvents = outcome { statistics.add(.eagainRetries) }
        let step = copyPolicy.step(after: outcome, pageCount: run.pageCount, pageSize: run.pageSize,
                                   memoryRefusals: &process.memoryRefusals) { drainEvents(process) }
        switch step {
        case .delivered(let pages, let woken):
            if purpose.coversPendingPages { process.space.markDelivered(run.address, pages: pages) }
            if woken {
                count(pages * process.space.basePagesPerPage, deliveredFor: purpose, into: process)
                if pages > 0 && handoverDiedAt != 0 { firstPageAfterHandover() }
            } else {
                statistics.add(.alreadyPresent)
            }
        case .refused:
            if case .failed = outcome { statistics.add(.eagainRetries) }  // ENOMEM: retried like a refused copy
            process.copiesRefused()
        case .retry, .shrink:
            break
        case .dropped(let errno):
            if purpose.coversPendingPages { drop(run, of: process, because: errno) }
        case .retired(let errno):
            statistics.add(.copiesProcessGone)
            retire(process, .exited, detail: "\(errno)")
        case .failed(let errno):
            statistics.add(.copiesFailed)
            fail(purpose.failure(run, pid: process.imagePid, errno))
        }
        return step
    }

    /// Counts what one copy delivered; pages copied into a forked child also under `pagesCopiedToForks` (a job's
    /// progress counts its announced tasks' pages only).
    private func count(_ basePages: Int, deliveredFor purpose: CopyPurpose, into process: TrackedProcess) {
        switch purpose {
        case .fault, .remote, .fill, .prefetch:
            if process.parentID != nil { statistics.add(.pagesCopiedToForks, basePages) }
        case .zeroPage, .poison:
            break
        }
        switch purpose {
        case .fault, .remote(urgent: true):
            statistics.add(.pagesCopiedOnFault, basePages)
            statistics.add(.copiesDone)
        case .fill, .remote(urgent: false):
            statistics.add(.pagesCopiedInBackground, basePages)
            statistics.add(.copiesDone)
        case .prefetch:
            statistics.add(.pagesCopiedInBackground, basePages)
            statistics.add(.pagesPrefetched, basePages)
            statistics.add(.copiesDone)
        case .zeroPage:
            statistics.add(.pagesZeroed, basePages)
            statistics.add(.zeroFillsDone)
        case .poison:
            break
        }
    }

    /// The range of `run` is gone: its pages are no longer pending.
    func drop(_ run: AddressSpace.Run, of process: TrackedProcess, because errno: Errno) {
        let dropped = process.space.markDelivered(run.address, pages: run.pageCount)
        statistics.add(.pagesDropped, dropped * process.space.basePagesPerPage)
        logger.warning("range refused by the kernel; dropping it", metadata: [
            "pid": "\(process.imagePid)", "address": "\(hex(run.address))", "pages": "\(run.pageCount)",
            "errno": "\(errno)",
        ])
    }
}

/// A refused copy's errno for an error message, with the likely cause where there is one: the kernel charges a
/// copied page to the target's memory cgroup, and refuses it with ENOMEM when that cgroup is at its limit and may
/// not OOM-kill (cgroup v1 `memory.oom_control` 1).
func copyFailure(_ errno: Errno) -> String {
    errno == .noMemory
        ? "\(errno) (the process's memory cgroup is at its limit, or the system is out of memory)" : "\(errno)"
}
