import Userfaultfd

extension RestoreJournal {
    /// Finishes the record of the uffd read its daemon died in (`interruptedUffdRead`), as that daemon would have:
    /// the events among the messages in the read area that have no entry yet are recorded (a fork's child gets the
    /// next engine id), then the read is marked done. Faults among them need nothing: the successor wakes every
    /// blocked thread and delivers every page still pending. Returns nil when no read was interrupted, else how many
    /// messages the read had returned and how many of its events this recorded (0 when the daemon had recorded them
    /// all, or the read held only faults).
    ///
    /// Refuses (`.corrupt`) what a read cannot have left: a message of an unknown kind, entries after the read's
    /// start that are not its events in order, or a process the journal never tracked.
    @discardableResult
    public func completeInterruptedRead() throws(AdoptionRefusal) -> (messages: Int, recorded: Int)? {
        guard let read = interruptedUffdRead else { return nil }
        let total = count
        guard read.entriesBefore >= 0, read.entriesBefore <= total else {
            throw .corrupt(index: total, "the interrupted read began at entry \(read.entriesBefore) of \(total)")
        }
        var events: [Event] = []
        let messages = Event.decodeLeading(uffdMessages, capacity: Self.uffdMessagesCapacity)
        for (slot, message) in messages.enumerated() {
            switch message {
            case .success(.pageFault): continue
            case .success(let event): events.append(event)
            case .failure(let unknown):
                throw .corrupt(index: total, "slot \(slot) of the interrupted read: \(unknown)")
            }
        }
        let all = try entries()
        var highestID = 0
        var tracked = Set<Int>()
        for entry in all {
            switch entry {
            case .task(let process, _, _): highestID = max(highestID, process); tracked.insert(process)
            case .fork(_, let child, _): highestID = max(highestID, child); tracked.insert(child)
            default: break
            }
        }
        guard tracked.contains(read.process) else {
            throw .corrupt(index: total, "the interrupted read was of process \(read.process), which was never tracked")
        }
        // The entries after the read began are its first events, recorded before the daemon died.
        let recorded = all[read.entriesBefore...]
        guard recorded.count <= events.count else {
            throw .corrupt(index: total, "\(recorded.count) entries after the interrupted read began, which held \(events.count) events")
        }
        for (offset, (entry, event)) in zip(recorded, events).enumerated() {
            // A fork's child id is the one the daemon gave it; everything else must be the event's.
            var child = 0
            if case .fork(_, let id, _) = entry { child = id }
            guard entry == Entry(recording: event, of: read.process, child: child) else {
                throw .corrupt(index: read.entriesBefore + offset, "\(entry) is not event \(offset) of the interrupted read (\(event))")
            }
        }
        for event in events.dropFirst(recorded.count) {
            if case .fork = event { highestID += 1 }
            if let entry = Entry(recording: event, of: read.process, child: highestID) { record(entry) }
        }
        if hasOverflowed { throw .overflowed }
        endUffdRead()
        return (messages.count, events.count - recorded.count)
    }
}

extension RestoreJournal.Entry {
    /// The entry the engine records for `event`, read from the uffd of `process` (a fork's child gets engine id
    /// `child`); nil for a page fault, which is not recorded.
    public init?(recording event: Event, of process: Int, child: Int) {
        switch event {
        case .fork(let descriptor): self = .fork(parent: process, child: child, uffd: descriptor)
        case .remap(let from, let to, let length): self = .remap(process: process, from: from, to: to, length: length)
        case .remove(let start, let end): self = .remove(process: process, start: start, end: end)
        case .unmap(let start, let end): self = .unmap(process: process, start: start, end: end)
        case .pageFault: return nil
        }
    }
}
