import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A restarted `lazy-pagesd serve` takes over the jobs its predecessor left in systemd's descriptor store: each job
/// under its old id and owner, its restore rebuilt from its journal (`JobSpec.adoptedSession`: a CRIU restore or a
/// Firecracker VM's) and continued.
///
/// A job that cannot be continued — its record or journal unusable, the journal unable to vouch for the restore,
/// a descriptor missing or not back at its number, the images gone — falls back to what happens without the store:
/// its processes are ended (by a guardian told the processes the dead daemon's guardian knew), never served a page
/// that might be wrong; one log line says which job and why, and `lazy-pages status` shows the job `failed` with
/// that reason (when its record says whose it was). Other jobs are not affected.
enum JobAdoption {
    static func adoptAll(_ stored: StoredJobs, registry: JobRegistry, policy: JobPolicy, logger: Logger) {
        guard let store = registry.store else {
            // Nothing keeps them: end every job as a daemon without a store would have (its guardians did).
            for (id, descriptors) in stored.jobs.sorted(by: { $0.key < $1.key }) {
                fallBack(id: id, descriptors: descriptors, record: nil, journal: journal(in: descriptors).0,
                         parking: nil, reason: "the descriptor store is off (--fd-store-max 0)", registry: registry,
                         logger: logger)
            }
            return
        }
        for (name, fd) in stored.foreign where name != "control" && name != JobRegistry.nextIDName {
            logger.warning("a descriptor in the store is not a job's: dropped", metadata: ["name": "\(name)"])
            try? store.drop(name: name)
            close(fd)
        }
        for id in stored.jobs.keys.sorted(by: { (Int($0) ?? 0, $0) < (Int($1) ?? 0, $1) }) {
            adopt(id: id, descriptors: stored.jobs[id]!, unplaced: stored.unplaced.contains(id), store: store,
                  registry: registry, policy: policy, logger: logger)
        }
    }

    private static func journal(in descriptors: [StoredJobs.Descriptor]) -> (RestoreJournal?, String?) {
        guard let fd = descriptors.first(where: { $0.kind == "journal" })?.descriptor else {
            return (nil, "its journal is not in the store")
        }
        do {
            return (try RestoreJournal(adopting: fd), nil)
        } catch {
            return (nil, "its journal is unusable: \(error)")
        }
    }

    private static func adopt(
        id: String, descriptors: [StoredJobs.Descriptor], unplaced: Bool, store: any DescriptorStore,
        registry: JobRegistry, policy: JobPolicy, logger: Logger
    ) {
        var jobLogger = logger
        jobLogger[metadataKey: "job"] = "\(id)"
        var names: [String: Int] = [:]
        for descriptor in descriptors { names[descriptor.name, default: 0] += 1 }
        let (journal, journalProblem) = journal(in: descriptors)

        var recordFile: JobRecordFile?
        var record: JobRecord?
        var problem: String?
        if let fd = descriptors.first(where: { $0.kind == "record" })?.descriptor {
            do {
                let file = try JobRecordFile(adopting: fd)
                recordFile = file
                switch file.read() {
                case .success(let found) where found.id == id: record = found
                case .success(let found): problem = "its record names job \(found.id)"
                case .failure(let reason): problem = "its record is unusable (\(reason))"
                }
            } catch {
                problem = "its record cannot be mapped: \(error)"
            }
        } else {
            problem = "its record is not in the store"
        }
        let parking = recordFile.map {
            JobParking(adopting: id, record: $0, names: names, store: store, logger: jobLogger)
        }
        // A job that had ended: shown as it ended. Whatever else of it is still in the store (the daemon died
        // between its last record and dropping the rest) is let go of: its processes had all their pages or were
        // ended before its last record was written.
        if problem == nil, let record, record.state.isFinal, let parking {
            for descriptor in descriptors where descriptor.kind != "record" && descriptor.kind != "journal" {
                close(descriptor.descriptor)
            }
            if journal == nil, let fd = descriptors.first(where: { $0.kind == "journal" })?.descriptor { close(fd) }
            registry.adopted(Job(ended: record, parking: parking, logger: jobLogger))
            return
        }
        if problem == nil { problem = journalProblem }
        if problem == nil, unplaced { problem = "a descriptor of it could not be put back at its number" }
        guard problem == nil, let record, let journal, let parking else {
            return fallBack(id: id, descriptors: descriptors, record: record, journal: journal, parking: parking,
                            reason: problem ?? "?", registry: registry, logger: jobLogger, store: store)
        }
        let owner = PeerCredentials(pid: record.owner.pid, uid: record.owner.uid, gid: record.owner.gid)
        let access = SocketAccess(groupAccess: record.spec.options.socketGroupAccess ?? false,
                                  allowRoot: policy.allowRootPeers)
        var restore: (any JobSession)?
        do {
            let session = try withFilesystemIdentity(of: owner) {
                try record.spec.adoptedSession(journal: journal, uffdLimit: registry.limits.uffdsPerJob,
                                               socketAccess: access, logger: jobLogger)
            }
            restore = session
            try session.startGuardian()
            let keeper = ParkingObserver(parking: parking, journal: journal, frontEnd: record.spec.frontEnd)
            session.engine.observer = FanOutObserver([session.engine.observer, keeper].compactMap { $0 })
            keeper.follow()
        } catch {
            // The uffds the failed restore took are still open (released, not closed): closed only once the
            // fall-back's guardian has ended the processes.
            let abandoned = error as? AdoptionAbandoned
            let uffds = abandoned?.uffds ?? restore?.engine.relinquishUffds() ?? []
            let cause = abandoned?.underlying ?? error
            let word = (cause as? RestoreJournal.AdoptionRefusal).map { " (\($0.reasonWord))" } ?? ""
            return fallBack(id: id, descriptors: descriptors, record: record, journal: journal, parking: parking,
                            reason: "the restore cannot be continued\(word): \(cause)", registry: registry,
                            logger: jobLogger, store: store, journalOwned: true, closeAfterwards: uffds)
        }
        guard let restore else { return }
        jobLogger.notice("job re-adopted after a restart of the daemon", metadata: [
            "owner": "\(record.owner.uid)", "restarts": "\(record.restarts + 1)", "state": "\(record.state.rawValue)",
            "handovers": "\(journal.handovers)",
        ])
        registry.adopted(Job(id: id, owner: owner, spec: record.spec, session: restore, parking: parking,
                             adoptedFrom: record, logger: jobLogger))
    }

    /// Ends the processes of a job that cannot be continued, drops it from the store, and shows it as failed.
    private static func fallBack(
        id: String, descriptors: [StoredJobs.Descriptor], record: JobRecord?, journal: RestoreJournal?,
        parking: JobParking?, reason: String, registry: JobRegistry, logger: Logger,
        store: (any DescriptorStore)? = nil, journalOwned: Bool = false, closeAfterwards: [Int32] = []
    ) {
        var ended = "nothing known to end"
        if let journal {
            // A guardian that loads what the dead daemon's guardian knew, and ends it all (stopped, then killed,
            // while this process still holds every uffd of the job).
            do {
                let guardian = try GuardianLink(logger: logger)
                guardian.journal(journal, handover: false)
                let status = guardian.finish(clean: false)
                ended = status == GuardianLink.killedExitStatus ? "its processes were killed" : "no process of it was left"
            } catch {
                ended = "its processes could not be ended (\(error))"
            }
        }
        for uffd in closeAfterwards { close(uffd) }
        logger.error("cannot continue a job after the restart of the daemon: \(reason); \(ended)", metadata: [
            "owner": "\(record.map { "\($0.owner.uid)" } ?? "unknown")",
        ])
        if let parking {
            // The record stays (rewritten as failed) while the job is listed; everything else goes now.
            if record != nil { parking.releaseAllButRecord() } else { parking.release() }
        } else if let store {
            for name in Set(descriptors.map(\.name)) { try? store.drop(name: name) }
        }
        // A refused adoption may have taken some of them over already (and closed them as it unwound): those are
        // left alone rather than risk closing a number that was reused.
        if !journalOwned {
            for descriptor in descriptors where descriptor.kind != "record" && descriptor.kind != "journal" {
                close(descriptor.descriptor)
            }
            if journal == nil, let fd = descriptors.first(where: { $0.kind == "journal" })?.descriptor { close(fd) }
        }
        if let record {
            registry.adopted(Job(failedAdoptionOf: record, reason: "not continued after a restart of the daemon: "
                                 + "\(reason); \(ended)", parking: parking, logger: logger))
        }
    }
}
