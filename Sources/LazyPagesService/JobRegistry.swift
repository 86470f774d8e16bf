import Foundation
import LazyPagesCRIU
import LazyPagesControl
import LazyPagesEngine
import LinuxSupport
import Logging

/// Every job of the service, who owns it, and the per-uid bound. Thread-safe.
final class JobRegistry: @unchecked Sendable {
    struct Refusal: Error {
        var code: ControlReply.ErrorCode
        var message: String
    }

    let limits: ServiceLimits
    private let logger: Logger
    private let lock = NSLock()
    private var jobs: [String: Job] = [:]
    private var order: [String] = []
    private var nextID = 1
    /// Jobs being created (their sessions are opening), by uid: they count toward the bound.
    private var starting: [uid_t: Int] = [:]
    private var accepting = true
    /// Counters of forgotten jobs, so that totals never go backwards.
    private(set) var forgottenTotals = ForgottenTotals()
    private let changed = NSCondition()
    /// Called (on a job's or a connection's thread) after a job was added or ended.
    var onChange: (@Sendable () -> Void)?

    init(limits: ServiceLimits, logger: Logger) {
        self.limits = limits
        self.logger = logger
    }

    /// Creates, registers and starts a job for `owner`; `makeSession` runs with the owner's filesystem identity.
    func add(spec: JobSpec, owner: PeerCredentials, makeSession: (String, Logger) throws -> any JobSession) throws(Refusal) -> Job {
        lock.lock()
        guard accepting else {
            lock.unlock()
            throw Refusal(code: .shuttingDown, message: "the daemon is shutting down and takes no new jobs")
        }
        let active = jobs.values.filter { $0.owner.uid == owner.uid && !$0.isFinished }.count
            + starting[owner.uid, default: 0]
        guard active < limits.activeJobsPerUID else {
            lock.unlock()
            throw Refusal(code: .tooManyJobs,
                          message: "uid \(owner.uid) already has \(active) jobs running (at most \(limits.activeJobsPerUID))")
        }
        let id = String(nextID)
        nextID += 1
        // Reserve the slot while the session is made, outside the lock (it reads images).
        starting[owner.uid, default: 0] += 1
        lock.unlock()
        defer {
            lock.lock()
            starting[owner.uid, default: 1] -= 1
            lock.unlock()
        }
        var jobLogger = logger
        jobLogger[metadataKey: "job"] = "\(id)"
        let session: any JobSession
        do {
            session = try withFilesystemIdentity(of: owner) { try makeSession(id, jobLogger) }
            // Every job is guarded before anything can connect to it.
            try session.startGuardian()
        } catch {
            throw Refusal(code: .startFailed, message: "cannot start the job: \(error)")
        }
        let job = Job(id: id, owner: owner, spec: spec, session: session, logger: jobLogger)
        lock.lock()
        jobs[id] = job
        order.append(id)
        let stillAccepting = accepting
        lock.unlock()
        job.start { [weak self] _ in self?.jobEnded() }
        if !stillAccepting { job.cancel(reason: "the daemon is shutting down") }
        onChange?()
        return job
    }

    private func jobEnded() {
        lock.lock()
        // Forget the oldest ended jobs beyond the bound.
        var finished = order.filter { jobs[$0]!.isFinished }
        while finished.count > limits.finishedJobsKept {
            let id = finished.removeFirst()
            if let job = jobs.removeValue(forKey: id) { forgottenTotals.add(job.statistics) }
            order.removeAll { $0 == id }
        }
        lock.unlock()
        changed.lock()
        changed.broadcast()
        changed.unlock()
        onChange?()
    }

    /// The job `id` if `peer` may see it.
    func job(_ id: String, for peer: PeerCredentials) throws(Refusal) -> Job {
        lock.lock()
        let job = jobs[id]
        lock.unlock()
        // Another uid's job is answered exactly like a job that does not exist: its existence is not disclosed.
        guard let job, peer.mayManage(jobOwnedBy: job.owner.uid) else {
            throw Refusal(code: .notFound, message: "no job \(id) owned by uid \(peer.uid)")
        }
        return job
    }

    /// The jobs `peer` may see (all of them for root), oldest first.
    func jobs(for peer: PeerCredentials?) -> [Job] {
        lock.lock()
        defer { lock.unlock() }
        return order.compactMap { jobs[$0] }.filter { peer?.mayManage(jobOwnedBy: $0.owner.uid) ?? true }
    }

    /// Stops taking jobs (graceful shutdown).
    func stopAccepting() {
        lock.lock()
        accepting = false
        lock.unlock()
    }

    /// Waits until no job is running or `deadline` passed; the jobs still running.
    func waitForRunningJobs(until deadline: Date) -> [Job] {
        changed.lock()
        defer { changed.unlock() }
        while true {
            let running = jobs(for: nil).filter { !$0.isFinished }
            if running.isEmpty { return [] }
            if !changed.wait(until: deadline) { return jobs(for: nil).filter { !$0.isFinished } }
        }
    }
}

/// Counter sums of jobs no longer kept.
struct ForgottenTotals {
    var counters: [RestoreStatistics.Counter: Int] = [:]
    var latencyBuckets: [Int] = Array(repeating: 0, count: RestoreStatistics.faultLatencyBucketBounds.count + 1)
    var latencySumNanoseconds: UInt64 = 0

    mutating func add(_ statistics: RestoreStatistics) {
        for counter in RestoreStatistics.Counter.allCases { counters[counter, default: 0] += statistics[counter] }
        let latency = statistics.faultLatency
        for (i, n) in latency.buckets.enumerated() { latencyBuckets[i] += n }
        latencySumNanoseconds &+= latency.sumNanoseconds
    }
}
