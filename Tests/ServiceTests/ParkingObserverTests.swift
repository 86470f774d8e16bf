import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesFirecracker
import Logging
import Testing
@testable import LazyPagesService

#if canImport(Glibc)
import Glibc
#endif

/// Which descriptors of a job the service keeps in systemd's descriptor store: what the journal names and is still
/// open, never a number that was closed (it may be something else's by the time it is read).
@Suite struct ParkingObserverTests {
    final class RecordingStore: DescriptorStore, @unchecked Sendable {
        private let lock = NSLock()
        private(set) var kept: [String: [Int32]] = [:]
        private(set) var log: [String] = []
        func keep(_ descriptors: [Int32], name: String, poll: Bool) throws {
            lock.lock(); defer { lock.unlock() }
            for fd in descriptors where fcntl(fd, F_GETFD) < 0 {
                throw POSIXError(.EBADF)  // as sendmsg(SCM_RIGHTS) to systemd would
            }
            kept[name] = descriptors
            log.append("keep \(name)")
        }
        func drop(name: String) throws {
            lock.lock(); defer { lock.unlock() }
            kept[name] = nil
            log.append("drop \(name)")
        }
        func adopt(name: String, count: Int) {}
    }

    func frontEnd(_ kind: CRIUJournalEntry, _ descriptor: Int32) -> RestoreJournal.Entry {
        .frontEnd(kind: kind.rawValue, a: Int64(descriptor), b: 0)
    }

    /// An adopted job's whole history is read at once: the listener and connection it opened and closed long ago,
    /// a retired process's uffd, are not stored again (the old code stored the listener's number, closed by then:
    /// EBADF, or worse another descriptor now at that number); the live uffds are.
    @Test func aHistoryReadAtOnceStoresOnlyWhatIsStillOpen() throws {
        let store = RecordingStore()
        let parking = try JobParking(jobID: "7", store: store, logger: Logger(label: "test"))
        let journal = try RestoreJournal(description: Array("test".utf8))
        var pipes: [Int32] = [-1, -1]
        #expect(pipe(&pipes) == 0)
        defer { close(pipes[0]); close(pipes[1]) }
        // The listener's number, closed by the predecessor, is open again here for something else.
        let closedNumber = open("/dev/null", O_RDONLY | O_CLOEXEC)
        #expect(closedNumber >= 0)
        defer { close(closedNumber) }
        journal.record(frontEnd(.listener, closedNumber))
        journal.record(frontEnd(.connection, 987))  // not open here at all
        journal.record(.task(process: 1, imagePid: 100, uffd: pipes[0]))
        journal.record(.task(process: 2, imagePid: 101, uffd: 986))
        journal.record(frontEnd(.listenerClosed, closedNumber))
        journal.record(.retired(process: 2))
        journal.record(.fork(parent: 1, child: 3, uffd: pipes[1]))
        journal.record(frontEnd(.connectionClosed, 987))

        let observer = ParkingObserver(parking: parking, journal: journal, frontEnd: .criu)
        observer.catchUp()
        #expect(Set(store.kept.keys) == ["lpj.7.record", "lpj.7.fd.\(pipes[0])", "lpj.7.fd.\(pipes[1])"])
        #expect(!store.log.contains { $0.contains("fd.\(closedNumber)") || $0.contains("fd.98") })

        // Later, one entry at a time (the engine's calls): a retirement drops what an earlier call stored.
        journal.record(.retired(process: 1))
        observer.processRetired(id: 1)
        #expect(Set(store.kept.keys) == ["lpj.7.record", "lpj.7.fd.\(pipes[1])"])
        #expect(store.log.last == "drop lpj.7.fd.\(pipes[0])")
        parking.release()
        #expect(store.kept.isEmpty)
    }

    /// A Firecracker job's journal: its listener (closed once the VM connected) and the VM's connection are named by
    /// the Firecracker front end's kinds, whose numbers mean other things to CRIU (4 is the memory file's size here,
    /// a closed connection there): the VM's connection and uffd are stored, the listener dropped, nothing else.
    @Test func aFirecrackerJournalStoresTheVMsConnectionAndUffd() throws {
        let store = RecordingStore()
        let parking = try JobParking(jobID: "8", store: store, logger: Logger(label: "test"))
        let journal = try RestoreJournal(description: Array("test".utf8))
        var listener: [Int32] = [-1, -1], connection: [Int32] = [-1, -1], uffd: [Int32] = [-1, -1]
        #expect(pipe(&listener) == 0 && pipe(&connection) == 0 && pipe(&uffd) == 0)
        defer { (listener + connection + uffd).forEach { close($0) } }
        func entry(_ kind: FirecrackerJournalEntry, _ a: Int64, _ b: Int64 = 0) -> RestoreJournal.Entry {
            .frontEnd(kind: kind.rawValue, a: a, b: b)
        }
        journal.record(entry(.listener, Int64(listener[0])))
        // The memory file's size in `a`: the number of an open descriptor here, which must not be dropped or stored.
        journal.record(entry(.memoryFile, Int64(connection[1]), 1234))
        let observer = ParkingObserver(parking: parking, journal: journal, frontEnd: .firecracker)
        observer.catchUp()
        #expect(Set(store.kept.keys) == ["lpj.8.record", "lpj.8.fd.\(listener[0])"])

        journal.record(entry(.connection, Int64(connection[0]), 4321))
        journal.record(entry(.listenerClosed, Int64(listener[0])))
        journal.record(entry(.regionAddress, 0x7000_0000, 4096))
        journal.record(entry(.regionFile, Int64(uffd[1]), 4096))
        journal.record(.task(process: 1, imagePid: 4321, uffd: uffd[0]))
        observer.taskAdded(id: 1, imagePid: 4321, uffd: uffd[0])
        #expect(Set(store.kept.keys) == ["lpj.8.record", "lpj.8.fd.\(connection[0])", "lpj.8.fd.\(uffd[0])"])
        #expect(!store.log.contains { $0.contains("fd.\(connection[1])") || $0.contains("fd.\(uffd[1])") })
        parking.release()
        #expect(store.kept.isEmpty)
    }
}
