import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import SystemdSupport

/// Where the service keeps every job's descriptors so that a restarted daemon can re-adopt the job: systemd's
/// descriptor store (`FileDescriptorStore`). A seam so that the registry does not depend on how they are kept.
public protocol DescriptorStore: AnyObject, Sendable {
    /// Keeps `descriptors` under `name` (several under one name are kept together). `poll: false`: never dropped
    /// for polling as an error (a uffd, see `FileDescriptorStore.store`).
    func keep(_ descriptors: [Int32], name: String, poll: Bool) throws
    /// Drops every descriptor kept under `name`.
    func drop(name: String) throws
    /// Counts descriptors that came back at start-up under `name` as held.
    func adopt(name: String, count: Int)
}

extension FileDescriptorStore: DescriptorStore {
    public func keep(_ descriptors: [Int32], name: String, poll: Bool) throws {
        try store(descriptors, name: name, poll: poll)
    }
    public func drop(name: String) throws { try remove(name: name) }
}

/// One job's share of the store: names of the form `lpj.ID.KIND` (`lpj.7.record`, `lpj.7.uffd.3`, ...), what it
/// stored, and its record file. Every name is removed when the job ends (`release()`), so that nothing of an ended
/// job — above all no uffd — outlives it in the store.
final class JobParking: @unchecked Sendable {
    static let prefix = "lpj."

    let jobID: String
    let store: any DescriptorStore
    let record: JobRecordFile
    private let logger: Logger
    private let lock = NSLock()
    private var names: Set<String> = []
    private var released = false

    /// A new job's parking: creates its record file and stores it first.
    init(jobID: String, store: any DescriptorStore, logger: Logger) throws {
        self.jobID = jobID
        self.store = store
        self.logger = logger
        record = try JobRecordFile(jobID: jobID)
        try park([record.descriptor], kind: "record")
    }

    /// The parking of an adopted job: its names are the ones that came back.
    init(adopting jobID: String, record: JobRecordFile, names: [String: Int], store: any DescriptorStore, logger: Logger) {
        self.jobID = jobID
        self.store = store
        self.record = record
        self.logger = logger
        self.names = Set(names.keys)
        for (name, count) in names { store.adopt(name: name, count: count) }
    }

    static func name(job: String, kind: String) -> String { prefix + job + "." + kind }

    /// The job id and kind of a stored name, or nil for a name that is not a job's.
    static func parse(_ name: String) -> (job: String, kind: String)? {
        guard name.hasPrefix(prefix) else { return nil }
        let rest = name.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), dot > rest.startIndex else { return nil }
        let job = String(rest[..<dot])
        let kind = String(rest[rest.index(after: dot)...])
        guard !kind.isEmpty, job.allSatisfy(\.isNumber) else { return nil }
        return (job, kind)
    }

    /// Stores `descriptors` as `lpj.ID.KIND`.
    func park(_ descriptors: [Int32], kind: String, poll: Bool = true) throws {
        let name = Self.name(job: jobID, kind: kind)
        lock.lock()
        defer { lock.unlock() }
        // Already there (an adopted job's descriptors came back under their names): not a second copy.
        guard !released, !names.contains(name) else { return }
        try store.keep(descriptors, name: name, poll: poll)
        names.insert(name)
    }

    /// Drops what is stored as `lpj.ID.KIND` (before the daemon closes it, so that the store does not keep it open).
    func unpark(kind: String) {
        let name = Self.name(job: jobID, kind: kind)
        lock.lock()
        defer { lock.unlock() }
        guard names.remove(name) != nil else { return }
        do { try store.drop(name: name) } catch {
            logger.error("cannot remove a descriptor from the store", metadata: ["name": "\(name)", "error": "\(error)"])
        }
    }

    func logFailure(descriptor: Int32, _ error: any Error) {
        logger.error("cannot keep a descriptor of the job in the store: a restart of the daemon will end this job's processes instead of continuing it", metadata: ["descriptor": "\(descriptor)", "error": "\(error)"])
    }

    /// Drops everything of the job from the store but its record (the job ended; its last record is written).
    func releaseAllButRecord() {
        let keep = Self.name(job: jobID, kind: "record")
        lock.lock()
        let all = names.subtracting([keep])
        names = names.intersection([keep])
        lock.unlock()
        for name in all.sorted() {
            do { try store.drop(name: name) } catch {
                logger.error("cannot remove a descriptor from the store", metadata: ["name": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// Drops everything of the job from the store (the job ended and is forgotten, or was never kept).
    func release() {
        lock.lock()
        let all = names
        names = []
        released = true
        lock.unlock()
        for name in all.sorted() {
            do { try store.drop(name: name) } catch {
                logger.error("cannot remove a descriptor from the store", metadata: ["name": "\(name)", "error": "\(error)"])
            }
        }
    }
}

/// The descriptors that came back from the store at start-up, grouped by job.
struct StoredJobs {
    struct Descriptor: Equatable {
        var name: String
        var kind: String
        var descriptor: Int32
    }

    /// Every job's descriptors, by job id.
    var jobs: [String: [Descriptor]] = [:]
    /// Descriptors with names that are not a job's (closed and removed from the store by the caller).
    var foreign: [(name: String, descriptor: Int32)] = []

    /// Jobs some of whose descriptors could not be put back at their old numbers (`placeAtOriginalNumbers`).
    var unplaced: Set<String> = []

    init(_ passed: [(name: String, descriptor: Int32)]) {
        for entry in passed {
            if let (job, kind) = JobParking.parse(entry.name) {
                jobs[job, default: []].append(Descriptor(name: entry.name, kind: kind, descriptor: entry.descriptor))
            } else {
                foreign.append(entry)
            }
        }
    }
}

extension StoredJobs {
    /// Puts every `lpj.ID.fd.N` descriptor back at number N, the number the job's journal names it by (the
    /// predecessor's), so that the journal's numbers hold in this process. Call first thing at start-up, before
    /// anything else opens a descriptor. Everything passed is first moved above every number in use or wanted;
    /// then each goes to its number, unless something else of this process is there (that job is `unplaced`:
    /// it cannot be continued). Other descriptors (records, journals, the control socket) stay where they were
    /// moved. Returns the passed list with the descriptors' new numbers.
    static func placeAtOriginalNumbers(_ passed: [(name: String, descriptor: Int32)])
        -> (passed: [(name: String, descriptor: Int32)], unplaced: Set<String>)
    {
        func target(_ name: String) -> Int32? {
            guard let (_, kind) = JobParking.parse(name), kind.hasPrefix("fd.") else { return nil }
            return Int32(kind.dropFirst(3))
        }
        let highest = passed.map { max($0.descriptor, target($0.name) ?? 0) }.max() ?? 0
        var moved: [(name: String, descriptor: Int32)] = []
        for entry in passed {
            let copy = fcntl(entry.descriptor, F_DUPFD_CLOEXEC, highest + 1)
            if copy >= 0 {
                close(entry.descriptor)
                moved.append((entry.name, copy))
            } else {
                moved.append(entry)
            }
        }
        var unplaced: Set<String> = []
        var result: [(name: String, descriptor: Int32)] = []
        for entry in moved {
            guard let number = target(entry.name), let (job, _) = JobParking.parse(entry.name) else {
                result.append(entry)
                continue
            }
            // The lowest free number from N on is N unless something of this process is there already (nothing
            // passed is: all of it was moved up). Never dup2: another thread may have opened that number meanwhile.
            let copy = number < 3 ? -1 : fcntl(entry.descriptor, F_DUPFD_CLOEXEC, number)
            guard copy == number else {
                if copy >= 0 { close(copy) }
                unplaced.insert(job)
                result.append(entry)
                continue
            }
            close(entry.descriptor)
            result.append((entry.name, number))
        }
        return (result, unplaced)
    }
}
