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
    /// Where every job's descriptors and record are kept across a restart of the daemon (nil: nowhere; a daemon
    /// that dies then has its jobs' processes ended by their guardians).
    let store: (any DescriptorStore)?
    /// Serializes the writes of the jobs' records.
    private let recordLock = NSLock()

    init(limits: ServiceLimits, store: (any DescriptorStore)? = nil, logger: Logger) {
        self.limits = limits
        self.store = store
        self.logger = logger
        if store != nil {
            // The records' progress counters, once a second (the state is written at once when it changes).
            let thread = Thread { [weak self] in
                while let registry = self {
                    registry.writeRecords()
                    Thread.sleep(forTimeInterval: 1)
                }
            }
            thread.name = "lazy-pages job records"
            thread.start()
        }
    }

    private func writeRecords() {
        recordLock.lock()
        defer { recordLock.unlock() }
        for job in jobs(for: nil) where job.parking != nil && !job.isFinished { job.writeRecord() }
    }

    private func writeRecord(of job: Job) {
        recordLock.lock()
        job.writeRecord()
        recordLock.unlock()
    }

    /// The name of the service's own entry in the store: a memory file holding the next job id, so that a restarted
    /// daemon never hands out an id a job of its predecessor had (kept in the store or not).
    static let nextIDName = "lps.next-job-id"
    private var idFile: SharedMemoryFile?

    /// Takes the next-id file that came back from the store, or makes (and stores) one.
    func keepIDs(inherited descriptor: Int32?) {
        guard let store else { return }
        do {
            if let descriptor {
                let file = try SharedMemoryFile(mapping: descriptor, taking: true)
                store.adopt(name: Self.nextIDName, count: 1)
                let value = file.base.load(as: UInt64.self)
                lock.lock()
                if value > UInt64(nextID), value < UInt64(Int.max) { nextID = Int(value) }
                idFile = file
                lock.unlock()
            } else {
                let file = try SharedMemoryFile(name: "lazy-pages-next-job-id", size: 8)
                try store.keep([file.descriptor], name: Self.nextIDName, poll: true)
                lock.lock()
                idFile = file
                lock.unlock()
            }
            lock.lock()
            idFile?.base.storeBytes(of: UInt64(nextID), as: UInt64.self)
            lock.unlock()
        } catch {
            logger.warning("the next job id is not kept in the store: a restarted daemon may reuse the id of a job that was not kept", metadata: ["error": "\(error)"])
        }
    }

    /// The next job id after an adopted job's (ids are never reused across restarts).
    private func reserveID(above id: String) {
        lock.lock()
        if let n = Int(id), n >= nextID { nextID = n + 1 }
        idFile?.base.storeBytes(of: UInt64(nextID), as: UInt64.self)
        lock.unlock()
    }

    /// Creates, registers and starts a job for `owner`; `makeSession` runs with the owner's filesystem identity and
    /// gets the journal description to keep (nil when the service has no descriptor store).
    func add(spec: JobSpec, owner: PeerCredentials, makeSession: (String, [UInt8]?, Logger) throws -> any JobSession)
        throws(Refusal) -> Job
    {
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
        idFile?.base.storeBytes(of: UInt64(nextID), as: UInt64.self)
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
        var parking: JobParking?
        do {
            if let store {
                do {
                    parking = try JobParking(jobID: id, store: store, logger: jobLogger)
                } catch {
                    jobLogger.warning("the job is not kept in the descriptor store: a restart of the daemon will end its processes", metadata: ["error": "\(error)"])
                }
            }
            let description = parking.map { _ in ServeJobDescription.encode(jobID: id) }
            session = try withFilesystemIdentity(of: owner) { try makeSession(id, description, jobLogger) }
            // Every job is guarded before anything can connect to it.
            try session.startGuardian()
            if let parking, let journal = session.journal {
                try parking.park([journal.descriptor], kind: "journal")
                let keeper = ParkingObserver(parking: parking, journal: journal, frontEnd: spec.frontEnd)
                session.engine.observer = FanOutObserver([session.engine.observer, keeper].compactMap { $0 })
                keeper.follow()
            }
        } catch {
            parking?.release()
            throw Refusal(code: .startFailed, message: "cannot start the job: \(error)")
        }
        let job = Job(id: id, owner: owner, spec: spec, session: session, parking: parking, logger: jobLogger)
        writeRecord(of: job)
        lock.lock()
        jobs[id] = job
        order.append(id)
        let stillAccepting = accepting
        lock.unlock()
        job.start { [weak self] in self?.jobEnded($0) }
        if !stillAccepting { job.cancel(reason: "the daemon is shutting down") }
        onChange?()
        return job
    }

    /// Registers and starts a job a restarted daemon took over (`JobAdoption`), under its old id.
    func adopted(_ job: Job) {
        reserveID(above: job.id)
        lock.lock()
        jobs[job.id] = job
        order.append(job.id)
        order.sort { (Int($0) ?? 0, $0) < (Int($1) ?? 0, $1) }
        lock.unlock()
        if !job.isFinished {
            writeRecord(of: job)
            job.start { [weak self] in self?.jobEnded($0) }
        } else {
            jobEnded(job)
        }
        onChange?()
    }

    /// A job ended (or came back from the store ended): its last record is written and everything else of it is
    /// dropped from the store; the oldest ended jobs beyond the bound are forgotten, their records dropped too.
    private func jobEnded(_ job: Job) {
        writeRecord(of: job)
        job.parking?.releaseAllButRecord()
        lock.lock()
        var finished = order.filter { jobs[$0]!.isFinished }
        var forgotten: [Job] = []
        while finished.count > limits.finishedJobsKept {
            let id = finished.removeFirst()
            if let job = jobs.removeValue(forKey: id) {
                forgottenTotals.add(job.statistics)
                forgotten.append(job)
            }
            order.removeAll { $0 == id }
        }
        lock.unlock()
        for job in forgotten { job.parking?.release() }
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
