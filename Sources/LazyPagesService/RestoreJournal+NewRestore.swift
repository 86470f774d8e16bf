import LazyPagesEngine

extension RestoreJournal {
    /// The journal of a new restore, CRIU's or Firecracker's (nil without a description: no journal, no
    /// hand-over), its hand-over flag set as the front end's options say.
    static func forNewRestore(_ description: [UInt8]?, handsOver: Bool) throws -> RestoreJournal? {
        guard let description else { return nil }
        let journal = try RestoreJournal(description: description)
        journal.setHandover(enabled: handsOver)
        return journal
    }
}
