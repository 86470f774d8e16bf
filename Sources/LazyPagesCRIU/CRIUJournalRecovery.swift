import LazyPagesEngine

extension RestoreJournal {
    /// For a successor whose predecessor died holding a word it took into the word area (`RestorerConnection`) and had
    /// not recorded what it said: records it as the predecessor would have (a pid awaiting its uffd, a zombie, RSTF),
    /// then clears the area. Call before `RestoreEngine.adopt`. A zero area means the word was not taken yet (it is
    /// still queued: the successor reads it); a word that names no task (`Int32.min`, which the
    /// daemon refuses) is refused.
    public func completeInterruptedWordRead() throws(AdoptionRefusal) -> Int32? {
        guard let read = interruptedWordRead else { return nil }
        defer { endWordRead() }
        guard read.word != 0 else { return nil }
        guard read.word != Int32.min else { throw .corrupt(index: count, "the restorer's last word names no task") }
        let expected: Entry
        if read.word == RestorerConnection.restoreFinished {
            expected = .allAnnounced
        } else if read.word < 0 {
            expected = .zombie(pid: -read.word)
        } else {
            expected = .frontEnd(kind: CRIUJournalEntry.awaitingDescriptor.rawValue, a: Int64(read.word), b: 0)
        }
        let since = try entries(from: read.entriesBefore)
        if !since.contains(expected) { record(expected) }
        return read.word
    }
}
