import Foundation
import LazyPagesControl
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesFirecracker

/// Keeps a job's share of the descriptor store in step with its restore: every descriptor the restore's journal
/// names — each task's and forked child's uffd, the front end's listener and connection (CRIU's restorer, or the
/// VM's: `frontEndDescriptor`) — is stored as
/// `lpj.ID.fd.N` (N: its number in this daemon, the number the journal uses), and dropped when the engine or the
/// front end lets go of it. Stands beside the guardian as the engine's observer (`FanOutObserver`): its calls come on
/// the engine's loop thread, while the journal's reading marker is still set for the event that brought the
/// descriptor, so a daemon killed before a descriptor is stored leaves a journal that cannot vouch for the restore.
final class ParkingObserver: RestoreObserver, @unchecked Sendable {
    let parking: JobParking
    let journal: RestoreJournal
    /// Whose front-end entries the journal holds (each front end numbers its own kinds).
    let frontEnd: JobSpec.FrontEnd
    private var scanned = 0
    /// The stored uffd of each live engine process.
    private var uffdOfProcess: [Int: Int32] = [:]
    /// `catchUp` runs on whichever thread records (the engine's loop, a front end, a cancel).
    private let lock = NSLock()

    init(parking: JobParking, journal: RestoreJournal, frontEnd: JobSpec.FrontEnd) {
        self.parking = parking
        self.journal = journal
        self.frontEnd = frontEnd
    }

    /// A front-end entry that opens or closes a descriptor the store keeps.
    enum FrontEndDescriptor: Equatable {
        case opened(Int32)
        case closed(Int32)
    }

    /// The descriptor a front end's journal entry opens or closes, if any — its listener and its connection (the
    /// restorer's, or the VM's, which lives until the restore ends); the one reading of both front ends' kinds.
    static func frontEndDescriptor(kind: UInt32, a: Int64, of frontEnd: JobSpec.FrontEnd) -> FrontEndDescriptor? {
        let descriptor = Int32(truncatingIfNeeded: a)
        switch frontEnd {
        case .criu:
            switch CRIUJournalEntry(rawValue: kind) {
            case .listener?, .connection?: return .opened(descriptor)
            case .listenerClosed?, .connectionClosed?: return .closed(descriptor)
            default: return nil
            }
        case .firecracker:
            switch FirecrackerJournalEntry(rawValue: kind) {
            case .listener?, .connection?: return .opened(descriptor)
            case .listenerClosed?: return .closed(descriptor)
            default: return nil
            }
        }
    }

    static func kind(of descriptor: Int32) -> String { "fd.\(descriptor)" }

    /// The uffds of the processes `entries` leave alive (tracked, by a task or fork entry, and not retired), by
    /// number: what the store must hold for the journal to vouch, whatever else of the job it holds.
    static func liveUffds(in entries: [RestoreJournal.Entry]) -> [Int32] {
        var uffdOfProcess: [Int: Int32] = [:]
        for entry in entries {
            switch entry {
            case .task(let process, _, let uffd), .fork(_, let process, let uffd): uffdOfProcess[process] = uffd
            case .retired(let process): uffdOfProcess.removeValue(forKey: process)
            default: break
            }
        }
        return uffdOfProcess.values.sorted()
    }

    /// Stores what the journal named since the last call and is still open at its end. Errors are logged by the
    /// caller's store; a descriptor not stored only means the restore cannot be adopted later (the journal then fails
    /// the check for its uffd). A descriptor opened and closed again within the entries read (an adopted job's whole
    /// history is read at once: the CRIU listener, closed long ago) is never stored: its number may be something
    /// else's by now.
    func catchUp() {
        lock.lock()
        defer { lock.unlock() }
        let entries: [RestoreJournal.Entry]
        do { entries = try journal.entries(from: scanned) } catch { return }
        guard !entries.isEmpty else { return }
        var wanted: [(descriptor: Int32, poll: Bool)] = []
        func closed(_ descriptor: Int32) {
            if let index = wanted.firstIndex(where: { $0.descriptor == descriptor }) {
                wanted.remove(at: index)
            } else {
                parking.unpark(kind: Self.kind(of: descriptor))
            }
        }
        for entry in entries {
            switch entry {
            case .task(let process, _, let uffd), .fork(_, let process, let uffd):
                uffdOfProcess[process] = uffd
                wanted.append((uffd, false))
            case .retired(let process):
                if let uffd = uffdOfProcess.removeValue(forKey: process) { closed(uffd) }
            case .frontEnd(let kind, let a, _):
                switch Self.frontEndDescriptor(kind: kind, a: a, of: frontEnd) {
                // Never polled (FDPOLL=0): a restorer that sent its last uffds and closed its end leaves them queued
                // in a connection that polls as hung up, which systemd would drop with them.
                case .opened(let descriptor)?: wanted.append((descriptor, false))
                case .closed(let descriptor)?: closed(descriptor)
                case nil: break
                }
            default:
                break
            }
        }
        scanned += entries.count
        for (descriptor, poll) in wanted {
            do {
                try parking.park([descriptor], kind: Self.kind(of: descriptor), poll: poll)
            } catch {
                parking.logFailure(descriptor: descriptor, error)
            }
        }
    }

    /// Catches up after every entry the journal records from now on (`RestoreJournal.afterRecording`), and now: a
    /// front end's connection closed is dropped from the store before its number can be reused (by another job's
    /// descriptor, which would then come back under two names at one number), a uffd is stored as soon as its
    /// process is recorded.
    func follow() {
        journal.afterRecording = { [weak self] in self?.catchUp() }
        catchUp()
    }

    func taskAdded(id: Int, imagePid: Int32, uffd: Int32) { catchUp() }
    func processForked(parent: Int, child: Int, uffd: Int32) { catchUp() }
    func processRetired(id: Int) {
        catchUp()
        if let fd = uffdOfProcess.removeValue(forKey: id) { parking.unpark(kind: Self.kind(of: fd)) }
    }
}

/// Tells several observers, in order (the guardian first: it must hold a copy before anything else happens).
final class FanOutObserver: RestoreObserver {
    let observers: [any RestoreObserver]
    init(_ observers: [any RestoreObserver]) { self.observers = observers }
    func taskAdded(id: Int, imagePid: Int32, uffd: Int32) {
        for o in observers { o.taskAdded(id: id, imagePid: imagePid, uffd: uffd) }
    }
    func processForked(parent: Int, child: Int, uffd: Int32) {
        for o in observers { o.processForked(parent: parent, child: child, uffd: uffd) }
    }
    func processRetired(id: Int) { for o in observers { o.processRetired(id: id) } }
}
