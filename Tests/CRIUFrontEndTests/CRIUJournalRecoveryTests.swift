import LazyPagesCRIU
import LazyPagesEngine
import Testing

/// A successor finishing the record of a word of CRIU's protocol that its predecessor took into the journal's word
/// area and died holding: recorded once, as the predecessor would have; nothing when it was recorded already or not
/// taken yet.
@Suite struct CRIUJournalRecoveryTests {
    static let awaiting = CRIUJournalEntry.awaitingDescriptor.rawValue

    static func taken(_ word: Int32, recordedAs entry: RestoreJournal.Entry? = nil) throws -> RestoreJournal {
        let journal = try RestoreJournal(description: [])
        journal.record(.task(process: 1, imagePid: 100, uffd: 5))
        journal.beginWordRead(socket: 7)
        journal.wordArea.storeBytes(of: word, as: Int32.self)
        if let entry { journal.record(entry) }
        return journal
    }

    @Test func aWordTakenButNotRecordedIsRecordedOnce() throws {
        let cases: [(Int32, RestoreJournal.Entry)] = [
            (101, .frontEnd(kind: Self.awaiting, a: 101, b: 0)),
            (-102, .zombie(pid: 102)),
            (0x5253_5446, .allAnnounced),  // "RSTF"
        ]
        for (word, entry) in cases {
            let journal = try Self.taken(word)
            #expect(try journal.completeInterruptedWordRead() == word)
            #expect(try journal.entries() == [.task(process: 1, imagePid: 100, uffd: 5), entry], "\(word)")
            #expect(journal.interruptedWordRead == nil)
            #expect(try journal.completeInterruptedWordRead() == nil)

            let recorded = try Self.taken(word, recordedAs: entry)
            #expect(try recorded.completeInterruptedWordRead() == word)
            #expect(recorded.count == 2, "recorded twice: \(word)")
        }
    }

    @Test func aWordNotTakenYetOrNamingNoTaskIsNotRecorded() throws {
        let notTaken = try Self.taken(0)
        #expect(try notTaken.completeInterruptedWordRead() == nil)
        #expect(notTaken.count == 1 && notTaken.interruptedWordRead == nil)

        let lowest = try Self.taken(Int32.min)
        #expect(throws: RestoreJournal.AdoptionRefusal.self) { try lowest.completeInterruptedWordRead() }
    }

    @Test func anAdoptionWithAWordLeftUnfinishedIsRefused() throws {
        let journal = try Self.taken(101)
        #expect(throws: RestoreJournal.AdoptionRefusal.readingEvents) {
            try RestoreEngine.adopt(journal: journal, logger: .init(label: "test"), verifyDescriptorTable: false) { _ in
                AddressSpace()
            }
        }
    }
}
