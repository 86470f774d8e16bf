import LazyPagesEngine
import Userfaultfd

extension RestoreJournal {
    /// Writes a `uffd_msg` into slot `slot` of the journal's read area, as the kernel would on a read into it (the
    /// layout of `struct uffd_msg`: the event code in byte 0, the payload from byte 8): what a daemon killed inside
    /// a read of events leaves behind.
    public func writeMessageAsTheKernelWould(slot: Int, code: UInt8, _ words: [UInt64]) {
        let at = uffdMessages + slot * Event.messageSize
        at.initializeMemory(as: UInt8.self, repeating: 0, count: Event.messageSize)
        at.storeBytes(of: code, as: UInt8.self)
        for (i, word) in words.enumerated() { at.storeBytes(of: word, toByteOffset: 8 + 8 * i, as: UInt64.self) }
    }
}
