import LinuxSupport
import Logging
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// A restore rebuilt from its journal by a successor daemon (`RestoreEngine.adopt`).
public struct Adoption {
    /// The engine, tracking every live process of the restore under its old id, with the layout the journal
    /// recorded. Not running yet: attach its observer (guardian), watch the front end's descriptors, then call
    /// `engine.resume(after:)` and `engine.run()`.
    public let engine: RestoreEngine
    /// The front end's own entries (`RestoreJournal.Entry.frontEnd`), in order, for it to resume its protocol.
    public let frontEnd: [(kind: UInt32, a: Int64, b: Int64)]
    /// The image pids of the tasks announced so far (live or retired), and the zombies.
    public let announcedTasks: [Int32]
    public let zombies: [Int32]
    /// Whether every task was announced before the daemon died (`resume` then tells the engine again).
    public let allTasksAnnounced: Bool
    /// The engine ids and uffds (descriptors in *this* process) of the live processes.
    public let live: [(process: Int, imagePid: Int32, uffd: Int32)]
    /// Uffds of retired processes that were still open (the daemon died between recording the retirement and
    /// closing the descriptor): closed by `adopt`, as the daemon was about to.
    public let closedRetired: [Int32]
    /// Entries replayed.
    public let entries: Int
    /// Uffds open in this process that the journal does not account for (at most `allowUnknownUffds`, with
    /// `verifyDescriptorTable`): the front end must claim each (e.g. the one its predecessor received for a task and
    /// died before recording) or refuse the restore.
    public var unknownUffds: [Int32] = []
}

/// A restore taken over from a journal that failed after `RestoreEngine.adopt` had taken its uffds: they were
/// released, not closed (`RestoreEngine.relinquishUffds`), so that the caller can end the processes first and close
/// them after (closing them first would hand every process zero pages).
public struct AdoptionAbandoned: Error, CustomStringConvertible {
    public let underlying: any Error
    /// The uffds left open, for the caller to close once the processes are ended.
    public let uffds: [Int32]
    public init(_ underlying: any Error, uffds: [Int32]) {
        self.underlying = underlying
        self.uffds = uffds
    }
    public var description: String { "\(underlying)" }
}

extension Adoption {
    /// Runs the front end's part of a take-over (`body`, building its session on this adoption); if it throws, the
    /// adopted uffds are given up without closing and the error comes back as `AdoptionAbandoned`. The one place
    /// both front ends keep that rule.
    public func completing<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw AdoptionAbandoned(error, uffds: engine.relinquishUffds())
        }
    }
}

extension RestoreEngine {
    /// Rebuilds the engine of a restore whose daemon died, from its journal and the uffds it left open (inherited by
    /// this process: standalone from the guardian, under systemd from the file-descriptor store).
    ///
    /// First finishes the record of a read of events the predecessor died in (`completeInterruptedRead`). Refuses
    /// (`RestoreJournal.AdoptionRefusal`) when the journal cannot vouch for the layout — a front end's reading
    /// marker is set, the restore had failed, the journal overflowed or an entry is damaged — when a live process's
    /// uffd is not open (or is not a uffd), when the page source cannot give a task's layout again, and (with
    /// `verifyDescriptorTable`) when this process holds a uffd the journal does not account for. A refused
    /// adoption must end the restore's processes (the guardian's fallback): never serve them.
    ///
    /// - `addressSpace`: the initial layout of a task from the page source (as at the task's announcement: every
    ///   lazy page pending). The journal's forks and layout changes are replayed on top; every page the result
    ///   still holds is delivered again (`EEXIST` where it is present: counted as delivered, never overwritten).
    /// - `descriptor`: the descriptor in this process of a uffd the journal names by the writer's number (standalone:
    ///   the same number; from a file-descriptor store: the caller's map); nil when it is not there.
    /// - `verifyDescriptorTable`: check that every uffd open in this process is one the journal accounts for (right
    ///   when this process holds one restore's descriptors and nothing else, i.e. standalone; off in a service that
    ///   holds many restores' uffds in one table), and close the uffds of processes retired but not closed yet (only
    ///   then: in a shared table their numbers may be another restore's).
    /// - `allowUnknownUffds`: how many such unaccounted uffds to hand to the caller (`Adoption.unknownUffds`)
    ///   instead of refusing.
    /// - `remotePages`: the page source for pages without local data (started here, as `useRemotePages`; every page
    ///   still pending is asked for again when needed: requests in flight at the death are re-sent that way).
    ///
    /// Reads no uffd (the caller's predecessor guardian still answers for the processes until this process has
    /// taken over); the new engine appends to the same journal.
    public static func adopt(
        journal: RestoreJournal, configuration: EngineConfiguration = EngineConfiguration(), logger: Logger,
        remotePages: RemotePageSource? = nil, descriptor: (Int32) -> Int32? = { $0 },
        verifyDescriptorTable: Bool = true, allowUnknownUffds: Int = 0, addressSpace: (Int32) throws -> AddressSpace
    ) throws(RestoreJournal.AdoptionRefusal) -> Adoption {
        try adopt(journal: journal, configuration: configuration, logger: logger, remotePages: remotePages,
                  descriptor: descriptor, verifyDescriptorTable: verifyDescriptorTable,
                  allowUnknownUffds: allowUnknownUffds) { pid, _ in try addressSpace(pid) }
    }

    /// `adopt` for a front end whose tasks' layouts are in the journal itself: `addressSpace` gets the image pid
    /// and the front end's entries recorded before the task (e.g. Firecracker's guest memory regions, journaled
    /// from the handshake, which nothing could read again).
    public static func adopt(
        journal: RestoreJournal, configuration: EngineConfiguration = EngineConfiguration(), logger: Logger,
        remotePages: RemotePageSource? = nil, descriptor: (Int32) -> Int32? = { $0 },
        verifyDescriptorTable: Bool = true, allowUnknownUffds: Int = 0,
        addressSpace: (_ imagePid: Int32, _ frontEnd: [(kind: UInt32, a: Int64, b: Int64)]) throws -> AddressSpace
    ) throws(RestoreJournal.AdoptionRefusal) -> Adoption {
        // A word its front end took and did not record is the front end's to finish first
        // (`completeInterruptedWordRead`): one left means no front end did, and it may matter (a pid whose uffd is next).
        if journal.isReading || journal.interruptedWordRead != nil { throw .readingEvents }
        if journal.hasFailed { throw .failed }
        if journal.hasOverflowed { throw .overflowed }
        if let read = try journal.completeInterruptedRead() {
            logger.notice("the predecessor died in a read of events: recorded what it had not", metadata: [
                "messages": "\(read.messages)", "eventsRecorded": "\(read.recorded)",
            ])
        }
        let entries = try journal.entries()

        struct Replayed {
            var imagePid: Int32
            var parentID: Int?
            var uffd: Int32
            var space: AddressSpace
        }
        var live: [Int: Replayed] = [:]
        var retiredDescriptors: [Int32] = []
        var frontEnd: [(kind: UInt32, a: Int64, b: Int64)] = []
        var announced: [Int32] = []
        var zombies: [Int32] = []
        var allAnnounced = false
        var highestID = 0
        var initial: [Int32: AddressSpace] = [:]
        for (index, entry) in entries.enumerated() {
            switch entry {
            case .task(let process, let imagePid, let uffd):
                guard live[process] == nil, process > highestID else {
                    throw .corrupt(index: index, "process \(process) announced out of order")
                }
                let space: AddressSpace
                if let known = initial[imagePid] {
                    space = known
                } else {
                    do { space = try addressSpace(imagePid, frontEnd) } catch { throw .source("pid \(imagePid): \(error)") }
                    initial[imagePid] = space
                }
                live[process] = Replayed(imagePid: imagePid, parentID: nil, uffd: uffd, space: space)
                announced.append(imagePid)
                highestID = process
            case .fork(let parent, let child, let uffd):
                guard let from = live[parent] else { throw .corrupt(index: index, "fork of unknown process \(parent)") }
                guard live[child] == nil, child > highestID else {
                    throw .corrupt(index: index, "forked child \(child) out of order")
                }
                live[child] = Replayed(imagePid: from.imagePid, parentID: parent, uffd: uffd, space: from.space)
                highestID = child
            case .remap(let process, let from, let to, let length):
                guard live[process] != nil else { throw .corrupt(index: index, "remap in unknown process \(process)") }
                live[process]!.space.remap(from: from, to: to, length: length)
            case .remove(let process, let start, let end):
                guard live[process] != nil, start <= end else {
                    throw .corrupt(index: index, "remove in unknown process \(process)")
                }
                live[process]!.space.remove(start, end)
            case .unmap(let process, let start, let end):
                guard live[process] != nil, start <= end else {
                    throw .corrupt(index: index, "unmap in unknown process \(process)")
                }
                live[process]!.space.unmap(start, end)
            case .retired(let process):
                guard let gone = live.removeValue(forKey: process) else {
                    throw .corrupt(index: index, "retirement of unknown process \(process)")
                }
                retiredDescriptors.append(gone.uffd)
            case .zombie(let pid):
                zombies.append(pid)
            case .allAnnounced:
                allAnnounced = true
            case .frontEnd(let kind, let a, let b):
                frontEnd.append((kind, a, b))
            }
        }

        // Every live uffd must be open here, and be one.
        var resolved: [Int: Int32] = [:]
        for (id, process) in live {
            guard let fd = descriptor(process.uffd), DescriptorCheck.isUserfaultfd(fd) else {
                throw .missingUffd(process: id, descriptor: process.uffd)
            }
            resolved[id] = fd
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)  // inherited without it (the guardian cleared it for the hand-over)
        }
        guard Set(resolved.values).count == resolved.count else {
            throw .corrupt(index: entries.count, "two live processes share one uffd")
        }
        // A retired process's uffd the daemon had not closed yet: close it now (unless its number was reused). Only
        // in the table this restore had to itself: in a service's table (`verifyDescriptorTable` off) the number
        // may be another job's by now, and a retired uffd was dropped from the descriptor store before the daemon
        // closed it, so it never comes back there (closing by number there took another job's uffd away).
        let liveDescriptors = Set(resolved.values)
        var closedRetired: [Int32] = []
        for number in retiredDescriptors where verifyDescriptorTable {
            guard let fd = descriptor(number), !liveDescriptors.contains(fd), !closedRetired.contains(fd),
                  DescriptorCheck.isUserfaultfd(fd) else { continue }
            close(fd)
            closedRetired.append(fd)
        }
        var unknown: [Int32] = []
        if verifyDescriptorTable {
            for fd in openDescriptors() where !liveDescriptors.contains(fd) && DescriptorCheck.isUserfaultfd(fd) {
                guard unknown.count < allowUnknownUffds else { throw .unknownUffd(descriptor: fd) }
                unknown.append(fd)
            }
        }

        let engine: RestoreEngine
        do {
            engine = try RestoreEngine(configuration: configuration, logger: logger)
            if let remotePages { try engine.useRemotePages(remotePages) }
        } catch {
            throw .source("\(error)")
        }
        engine.statistics.markStarted()
        engine.statistics.add(.tasksAnnounced, announced.count + zombies.count)
        var adopted: [(process: Int, imagePid: Int32, uffd: Int32)] = []
        for id in live.keys.sorted() {
            let process = live[id]!
            let fd = resolved[id]!
            do {
                _ = try engine.track(imagePid: process.imagePid, parentID: process.parentID,
                                     uffd: Userfaultfd(adopting: fd), space: process.space, id: id)
            } catch {
                throw .source("cannot watch the uffd of process \(id): \(error)")
            }
            engine.statistics.add(.pagesExpected, process.space.pendingPages * process.space.basePagesPerPage)
            adopted.append((id, process.imagePid, fd))
        }
        engine.nextID = highestID + 1
        engine.journal = journal
        engine.handoverDiedAt = journal.diedAt
        logger.info("restore adopted from its journal", metadata: [
            "entries": "\(entries.count)", "processes": "\(adopted.count)", "retiredClosed": "\(closedRetired.count)",
            "allAnnounced": "\(allAnnounced)", "handovers": "\(journal.handovers)",
        ])
        return Adoption(engine: engine, frontEnd: frontEnd, announcedTasks: announced, zombies: zombies,
                        allTasksAnnounced: allAnnounced, live: adopted, closedRetired: closedRetired,
                        entries: entries.count, unknownUffds: unknown)
    }

    /// Starts serving an adopted restore (call once this process answers for it: its guardian runs and the
    /// predecessor's guardian let go). Wakes every thread blocked on a fault of every live uffd (`UFFDIO_WAKE` over
    /// the whole address space): faults the dead daemon read but never answered are raised again, as new messages,
    /// for pages still missing (a thread whose page arrived meanwhile just runs on). Then, if every task was
    /// announced before, the background fill starts again.
    public func resume(after adoption: Adoption) {
        for process in processes.values {
            observer?.taskAdded(id: process.id, imagePid: process.imagePid, uffd: process.uffd.descriptor)
            wakeEveryFault(process)
        }
        if adoption.allTasksAnnounced { allTasksAnnounced() }
    }

    /// Logs the pause the processes saw: from the predecessor's death (as its guardian saw it) to this first page.
    func firstPageAfterHandover() {
        let now = monotonicNanoseconds()
        let pause = now > handoverDiedAt ? Double(now - handoverDiedAt) / 1e6 : 0
        handoverDiedAt = 0
        logger.notice("first page served after the hand-over", metadata: ["pauseMilliseconds": "\(pause)"])
    }

    /// `UFFDIO_WAKE` over every address a fault can be at (from `vm.mmap_min_addr` to the 47-bit user limit).
    func wakeEveryFault(_ process: TrackedProcess) {
        let low = UInt64(max(Self.mmapMinimumAddress, basePageSize))
        let high: UInt64 = 0x7fff_ffff_f000
        do {
            try process.uffd.wake(AddressRange(start: low, length: high - low))
        } catch {
            logger.warning("waking the faults of an adopted process failed", metadata: [
                "process": "\(process.id)", "error": "\(error)",
            ])
        }
    }

    static let mmapMinimumAddress: Int = {
        let fd = open("/proc/sys/vm/mmap_min_addr", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 65536 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = read(fd, &buffer, buffer.count)
        let text = String(decoding: buffer.prefix(max(0, n)), as: UTF8.self)
        let value = Int(text.filter { $0.isNumber }) ?? 65536
        return (value + basePageSize - 1) / basePageSize * basePageSize
    }()
}

/// The descriptors open in this process (`/proc/self/fd`).
func openDescriptors() -> [Int32] {
    guard let dir = opendir("/proc/self/fd") else { return [] }
    defer { closedir(dir) }
    let own = dirfd(dir)
    var result: [Int32] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let fd = Int32(name), fd != own { result.append(fd) }
    }
    return result
}
