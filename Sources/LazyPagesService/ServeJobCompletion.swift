import LazyPagesEngine
import LinuxSupport
import SystemdSupport

/// What the successor of a dead `lazy-pagesd serve` daemon does for one job before the restarted service takes it
/// back (`lazy-pagesd adopt`, started by the job's guardian, which shares the dead daemon's descriptor table): the
/// daemon stores a process's uffd in systemd's descriptor store only after it has recorded the process, so a daemon
/// killed in between — right after reading a fork into the journal's read area, or between recording a task and
/// storing its uffd — leaves a journal naming a uffd the store lacks, and the restarted service could only end the
/// job's processes (`missing-uffd`). The successor still holds every uffd of the table at its number; it records the
/// interrupted read as the daemon would have (`RestoreJournal.completeInterruptedRead`), stores the uffd of every live
/// process the journal names under the daemon's own name for it (`lpj.ID.fd.N`; systemd ignores a descriptor it
/// holds already), and waits until systemd has taken them (`BARRIER=1`) before it exits.
public enum ServeJobCompletion {
    /// What was done for the job.
    public struct Outcome: Sendable {
        public var jobID: String
        /// Uffds sent to the store (systemd drops the ones it holds already).
        public var storedUffds: Int
        /// Events of an interrupted read recorded here (nil: no read was interrupted).
        public var recordedEvents: Int?
    }

    /// A failure: the restarted service then finds the journal or the store short and ends the job's processes, as
    /// without this step.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func complete(journal: RestoreJournal, environment: [String: String]) throws(Failure) -> Outcome {
        guard let jobID = ServeJobDescription.jobID(journal.sourceDescription) else {
            throw Failure(description: "the journal is not a serve job's")
        }
        // The store's own count is this process's; systemd enforces the unit's FileDescriptorStoreMax=.
        guard let store = FileDescriptorStore(capacity: Int(Int32.max), environment: environment) else {
            throw Failure(description: "no NOTIFY_SOCKET to reach systemd's descriptor store")
        }
        let recorded: Int?
        let entries: [RestoreJournal.Entry]
        do {
            recorded = try journal.completeInterruptedRead()?.recorded
            entries = try journal.entries()
        } catch {
            throw Failure(description: "the journal cannot vouch for the restore: \(error)")
        }
        let uffds = ParkingObserver.liveUffds(in: entries).filter(DescriptorCheck.isUserfaultfd)
        do {
            for uffd in uffds {
                try store.store([uffd], name: JobParking.name(job: jobID, kind: ParkingObserver.kind(of: uffd)),
                                poll: false)
            }
            try store.barrier()
        } catch {
            throw Failure(description: "storing job \(jobID)'s uffds: \(error)")
        }
        return Outcome(jobID: jobID, storedUffds: uffds.count, recordedEvents: recorded)
    }
}
