import Foundation
import LazyPagesCRIU
import LazyPagesControl
import LazyPagesEngine
import LinuxSupport
import Logging

/// One restore the service runs: its session, its dedicated thread, its state. Thread-safe.
final class Job: @unchecked Sendable {
    let id: String
    let owner: PeerCredentials
    let spec: JobSpec
    let socketPath: String
    /// The engine's counters; kept after the session is released.
    let statistics: RestoreStatistics
    private let logger: Logger
    private let condition = NSCondition()
    private var session: (any JobSession)?
    private var outcome: RestoreOutcome?
    private var cancelRequested: String?

    init(id: String, owner: PeerCredentials, spec: JobSpec, session: any JobSession, logger: Logger) {
        self.id = id
        self.owner = owner
        self.spec = spec
        self.session = session
        self.logger = logger
        socketPath = session.socketPath
        statistics = session.statistics
    }

    /// Starts the restore on its own thread; `finished` runs on that thread once it ended.
    func start(finished: @escaping @Sendable (Job) -> Void) {
        condition.lock()
        let session = self.session
        condition.unlock()
        guard let session else { return }
        let thread = Thread { [self] in
            let report = session.run()
            let outcome = finalOutcome(of: report)
            condition.lock()
            self.outcome = outcome
            // Let go of the mapped images, sockets and uffds (the processes still waiting on them were ended by the
            // guardian before `run()` returned); the counters stay.
            self.session = nil
            condition.broadcast()
            condition.unlock()
            log(outcome)
            finished(self)
        }
        thread.name = "lazy-pages job \(id)"
        thread.start()
    }

    /// The outcome the job reports: the restore's, its reason saying whether the job's processes were ended.
    private func finalOutcome(of report: RestoreReport) -> RestoreOutcome {
        let ending = report.processesEnded.map { "; \($0)" }
            ?? (statistics[.tasksAnnounced] == 0 ? "; no process had been handed over" : "")
        switch report.outcome {
        case .completed: return .completed
        case .failed(let reason): return .failed(reason: reason + ending)
        case .cancelled(let reason): return .cancelled(reason: reason + ending)
        }
    }

    private func log(_ outcome: RestoreOutcome) {
        var metadata: Logger.Metadata = [
            "job": "\(id)", "owner": "\(owner.uid)", "front-end": "\(spec.frontEnd.rawValue)",
            "pages": "\(statistics.pagesCopied)", "faults": "\(statistics[.faults])",
            "seconds": "\(String(format: "%.3f", statistics.elapsedSeconds))",
        ]
        switch outcome {
        case .completed:
            logger.info("job completed", metadata: metadata)
        case .failed(let reason):
            metadata["reason"] = "\(reason)"
            logger.error("job failed", metadata: metadata)
        case .cancelled(let reason):
            metadata["reason"] = "\(reason)"
            logger.warning("job cancelled", metadata: metadata)
        }
    }

    /// Asks the restore to stop. False when it had already ended.
    @discardableResult
    func cancel(reason: String) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard outcome == nil, let session else { return false }
        if cancelRequested == nil { cancelRequested = reason }
        session.cancel(reason: reason)
        return true
    }

    var isFinished: Bool {
        condition.lock()
        defer { condition.unlock() }
        return outcome != nil
    }

    /// Waits until the job ended or `deadline` passed; true when it ended.
    func wait(until deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while outcome == nil {
            if !condition.wait(until: deadline) { return outcome != nil }
        }
        return true
    }

    var state: (JobState, String?) {
        condition.lock()
        defer { condition.unlock() }
        switch outcome {
        case .completed: return (.completed, nil)
        case .failed(let reason): return (.failed, reason)
        case .cancelled(let reason): return (.cancelled, reason)
        case nil: return (statistics[.tasksAnnounced] > 0 ? .running : .listening, nil)
        }
    }

    var info: JobInfo {
        let (state, reason) = self.state
        let s = statistics
        return JobInfo(
            id: id, owner: owner.uid, spec: spec, state: state, reason: reason, socket: socketPath,
            pagesHome: s.pagesCopied - s[.pagesCopiedToForks], pagesExpected: s[.pagesExpected], faults: s[.faults],
            eagainRetries: s[.eagainRetries], tasks: s[.tasksAnnounced], elapsedSeconds: s.elapsedSeconds,
            counters: s.snapshot)
    }
}
