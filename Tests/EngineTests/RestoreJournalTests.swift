import LazyPagesEngine
import LinuxSupport
import Logging
import Testing
import TestSupport
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// The restore journal a successor daemon continues a restore from: what is recorded is read back the same, and
/// every state in which it cannot vouch for the restore is refused by `RestoreEngine.adopt`, naming why.
@Suite struct RestoreJournalTests {
    static let logger = Logger(label: "journal-test")
    static let every: [RestoreJournal.Entry] = [
        .task(process: 1, imagePid: 100, uffd: 7), .fork(parent: 1, child: 2, uffd: 9),
        .remap(process: 2, from: 0x7000_0000, to: 0x7100_0000, length: 0x3000),
        .remove(process: 1, start: 0x1000_0000, end: 0x1000_2000), .unmap(process: 2, start: 0x5000, end: 0x6000),
        .retired(process: 2), .zombie(pid: 104), .allAnnounced, .frontEnd(kind: 3, a: 12, b: -5),
    ]

    @Test func entriesReadBackAsRecorded() throws {
        let journal = try RestoreJournal(description: Array("{\"directory\":\"/x\"}".utf8), maxHandovers: 2)
        for entry in Self.every { journal.record(entry) }
        let inherited = try RestoreJournal(adopting: dup(journal.descriptor))
        #expect(try inherited.entries() == Self.every)
        #expect(try inherited.entries(from: 5) == Array(Self.every[5...]))
        #expect(try inherited.entries(from: Self.every.count).isEmpty && inherited.entries(from: 99).isEmpty)
        #expect(inherited.sourceDescription == Array("{\"directory\":\"/x\"}".utf8))
        #expect(inherited.maxHandovers == 2 && inherited.handovers == 0)
        #expect(!inherited.isReading && !inherited.hasFailed && !inherited.handoverDisabled)
    }

    @Test func theMarkerTheFailureAndHandoverOffAreSeenByTheSuccessor() throws {
        let journal = try RestoreJournal(description: [])
        journal.beginReading()
        journal.beginReading()
        journal.endReading()
        #expect(journal.isReading)
        #expect(throws: RestoreJournal.AdoptionRefusal.readingEvents) {
            try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }
        journal.endReading()
        journal.markFailed()
        #expect(throws: RestoreJournal.AdoptionRefusal.failed) {
            try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }
        journal.setHandover(enabled: false)
        #expect(journal.handoverDisabled)
    }

    /// A daemon killed inside a read of events, after recording the first of its two events: the successor records
    /// the second (the fork, with the next engine id and the child uffd's number from the message) and only it; the
    /// fault among them needs no entry.
    @Test func anInterruptedReadIsRecordedFromTheReadArea() throws {
        let journal = try RestoreJournal(description: [])
        #expect(try journal.completeInterruptedRead() == nil)
        journal.record(.task(process: 1, imagePid: 10, uffd: 5))
        journal.record(.task(process: 2, imagePid: 11, uffd: 6))
        journal.beginUffdRead(process: 2)
        journal.writeMessageAsTheKernelWould(slot: 0, code: 0x15, [0x1000, 0x3000])        // remove [0x1000, 0x3000)
        journal.writeMessageAsTheKernelWould(slot: 1, code: 0x12, [0, 0x7000])             // a fault at 0x7000
        journal.writeMessageAsTheKernelWould(slot: 2, code: 0x13, [9])                     // fork, child uffd 9
        journal.record(.remove(process: 2, start: 0x1000, end: 0x3000))     // recorded before the death
        let read = try journal.completeInterruptedRead()
        #expect(read?.messages == 3 && read?.recorded == 1)
        #expect(journal.interruptedUffdRead == nil)
        #expect(try journal.entries().last == .fork(parent: 2, child: 3, uffd: 9))
        #expect(journal.count == 4)
        #expect(try journal.completeInterruptedRead() == nil)  // done once
    }

    @Test func anInterruptedReadThatContradictsTheJournalIsRefused() throws {
        let journal = try RestoreJournal(description: [])
        journal.record(.task(process: 1, imagePid: 10, uffd: 5))
        journal.beginUffdRead(process: 1)
        journal.writeMessageAsTheKernelWould(slot: 0, code: 0x14, [0x1000, 0x9000, 0x2000])  // remap 0x1000 -> 0x9000
        journal.record(.remap(process: 1, from: 0x1000, to: 0x8000, length: 0x2000))  // not that remap
        #expect(throws: RestoreJournal.AdoptionRefusal.self) { try journal.completeInterruptedRead() }
        #expect(throws: RestoreJournal.AdoptionRefusal.self) {
            try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }

        let unknown = try RestoreJournal(description: [])
        unknown.record(.task(process: 1, imagePid: 10, uffd: 5))
        unknown.beginUffdRead(process: 1)
        unknown.writeMessageAsTheKernelWould(slot: 0, code: 0x7f, [1])
        #expect(throws: RestoreJournal.AdoptionRefusal.self) { try unknown.completeInterruptedRead() }

        let stranger = try RestoreJournal(description: [])
        stranger.beginUffdRead(process: 4)  // a process the journal never tracked
        #expect(throws: RestoreJournal.AdoptionRefusal.self) { try stranger.completeInterruptedRead() }
    }

    @Test func aDamagedEntryIsRefusedNotTrusted() throws {
        let journal = try RestoreJournal(description: [])
        journal.record(.zombie(pid: 7))
        journal.record(.allAnnounced)
        let adoption = try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        #expect(adoption.zombies == [7] && adoption.allTasksAnnounced && adoption.live.isEmpty)
        // One bit of the second entry flipped.
        let at = journal.file.base + RestoreJournal.entriesOffset + RestoreJournal.entrySize + 8
        at.storeBytes(of: at.load(as: UInt8.self) ^ 1, as: UInt8.self)
        #expect(throws: RestoreJournal.AdoptionRefusal.corrupt(index: 1, "check word mismatch")) {
            try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }
    }

    @Test func aTaskWhoseUffdIsNotOpenIsRefused() throws {
        let journal = try RestoreJournal(description: [])
        let notAUffd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(notAUffd) }
        journal.record(.task(process: 1, imagePid: 100, uffd: notAUffd))
        #expect(throws: RestoreJournal.AdoptionRefusal.missingUffd(process: 1, descriptor: notAUffd)) {
            try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }
        // Entries that contradict the ones before them: a fork of a process never announced.
        let other = try RestoreJournal(description: [])
        other.record(.fork(parent: 4, child: 5, uffd: 9))
        #expect(throws: RestoreJournal.AdoptionRefusal.corrupt(index: 0, "fork of unknown process 4")) {
            try RestoreEngine.adopt(journal: other, logger: Self.logger, verifyDescriptorTable: false) { _ in AddressSpace() }
        }
    }

    /// A restore that fails while being taken over (after `adopt` took its uffds) gives them up without closing
    /// them (`relinquishUffds`): closing the last copy would hand the processes zero pages before anyone ended them.
    @Test func aFailedAdoptionLeavesTheUffdsOpen() throws {
        let journal = try RestoreJournal(description: [])
        let fd = try Userfaultfd.create().release()
        journal.record(.task(process: 1, imagePid: 100, uffd: fd))
        var released: [Int32] = []
        do {
            let adoption = try RestoreEngine.adopt(journal: journal, logger: Self.logger, verifyDescriptorTable: false) {
                _ in AddressSpace()
            }
            released = adoption.engine.relinquishUffds()
        }
        #expect(released == [fd])
        #expect(DescriptorCheck.isUserfaultfd(fd))  // still open with the engine gone
        close(fd)
    }

    @Test func aFileThatIsNotAJournalIsRefused() throws {
        let path = "/tmp/lp-not-a-journal-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        unlink(path)
        #expect(ftruncate(fd, off_t(RestoreJournal.entriesOffset + 4096)) == 0)
        #expect(throws: RestoreJournal.AdoptionRefusal.notAJournal("bad magic")) { try RestoreJournal(adopting: fd) }
    }
}
