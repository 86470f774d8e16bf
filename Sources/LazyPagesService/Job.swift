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
    /// The job's share of the descriptor store, if the service has one and the job is kept there.
    let parking: JobParking?
    /// Re-adoptions by restarted daemons, the last one's time (Unix seconds), and the progress the daemons before
    /// this one had made (counters by name; `pagesExpected` is the original total).
    let restarts: Int
    let lastAdoptedAt: Double?
    private let before: [String: Int]
    private let secondsBefore: Double

    init(id: String, owner: PeerCredentials, spec: JobSpec, session: any JobSession, parking: JobParking? = nil,
         adoptedFrom record: JobRecord? = nil, logger: Logger)
    {
        self.id = id
        self.owner = owner
        self.spec = spec
        self.session = session
        self.parking = parking
        self.logger = logger
        socketPath = record?.socket ?? session.socketPath
        statistics = session.statistics
        restarts = record.map { $0.restarts + 1 } ?? 0
        lastAdoptedAt = record.map { _ in Date().timeIntervalSince1970 }
        before = record?.counters ?? [:]
        secondsBefore = record?.elapsedSeconds ?? 0
    }

    /// A job known here only from its record, not running: shown with `outcome`.
    private init(record: JobRecord, outcome: RestoreOutcome, restarts: Int, lastAdoptedAt: Double?,
                 parking: JobParking?, logger: Logger)
    {
        id = record.id
        owner = PeerCredentials(pid: record.owner.pid, uid: record.owner.uid, gid: record.owner.gid)
        spec = record.spec
        socketPath = record.socket
        statistics = RestoreStatistics()
        self.parking = parking
        self.logger = logger
        self.restarts = restarts
        self.lastAdoptedAt = lastAdoptedAt
        before = record.counters
        secondsBefore = record.elapsedSeconds
        self.outcome = outcome
    }

    /// A job a restarted daemon could not continue (its processes were ended): shown with its reason.
    convenience init(failedAdoptionOf record: JobRecord, reason: String, parking: JobParking?, logger: Logger) {
        self.init(record: record, outcome: .failed(reason: reason), restarts: record.restarts + 1,
                  lastAdoptedAt: Date().timeIntervalSince1970, parking: parking, logger: logger)
    }

    /// An ended job a predecessor daemon kept in its list: shown as it ended (its record's state and reason).
    convenience init(ended record: JobRecord, parking: JobParking, logger: Logger) {
        let outcome: RestoreOutcome
        switch record.state {
        case .failed: outcome = .failed(reason: record.reason ?? "unknown")
        case .cancelled: outcome = .cancelled(reason: record.reason ?? "unknown")
        default: outcome = .completed
        }
        self.init(record: record, outcome: outcome, restarts: record.restarts, lastAdoptedAt: record.lastAdoptedAt,
                  parking: parking, logger: logger)
    }

    /// The record a restarted daemon re-adopts this job from, or shows it from once it ended.
    var record: JobRecord {
        let info = self.info
        return JobRecord(
            id: id, owner: .init(uid: owner.uid, gid: owner.gid, pid: owner.pid), spec: spec, socket: socketPath,
            state: info.state, reason: info.reason, counters: info.counters, elapsedSeconds: info.elapsedSeconds,
            restarts: restarts, lastAdoptedAt: lastAdoptedAt)
    }

    /// Rewrites the job's record in the store. Called by the registry only, one at a time.
    func writeRecord() {
        guard let parking else { return }
        do { try parking.record.write(record) } catch {
            logger.error("cannot write the job's record", metadata: ["error": "\(error)"])
        }
    }

    /// Starts the restore on its own thread; `finished` runs on that thread once it ended (the registry writes the
    /// job's last record there, then lets the store drop everything else of the job).
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
            // Only now, with every process of the job complete or ended, may the store let go of its uffds.
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
        case nil: return (statistics[.tasksAnnounced] > 0 || restarts > 0 ? .running : .listening, nil)
        }
    }

    var info: JobInfo {
        let (state, reason) = self.state
        let s = statistics
        var counters = s.snapshot
        for (name, value) in before { counters[name, default: 0] += value }
        // The first daemon's totals: a successor expects only what was still pending when it took over, and
        // announces no task again.
        for counter in [RestoreStatistics.Counter.pagesExpected, .tasksAnnounced] {
            if let value = before["\(counter)"] { counters["\(counter)"] = value }
        }
        func value(_ counter: RestoreStatistics.Counter) -> Int { counters["\(counter)"] ?? 0 }
        let copied = value(.pagesCopiedOnFault) + value(.pagesCopiedInBackground) - value(.pagesCopiedToForks)
        let expected = value(.pagesExpected)
        return JobInfo(
            id: id, owner: owner.uid, spec: spec, state: state, reason: reason, socket: socketPath,
            // A successor re-delivers what it cannot know was delivered (EEXIST counts as delivered).
            pagesHome: restarts > 0 ? min(copied, expected) : copied, pagesExpected: expected,
            faults: value(.faults), eagainRetries: value(.eagainRetries), tasks: value(.tasksAnnounced),
            elapsedSeconds: secondsBefore + s.elapsedSeconds, counters: counters,
            restarts: restarts > 0 ? restarts : nil, lastAdoptedAt: lastAdoptedAt)
    }
}
