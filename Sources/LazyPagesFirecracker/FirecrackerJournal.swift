import LazyPagesEngine
import LinuxSupport

/// The Firecracker front end's own entries in a restore journal (`RestoreJournal.Entry.frontEnd` kinds): what a
/// successor daemon needs beyond the engine's entries to continue a VM's restore — the socket, the VM's connection,
/// the memory file it served from, and the guest memory regions of the one handshake (which nothing can read again).
public enum FirecrackerJournalEntry: UInt32, Sendable {
    /// `a`: the listening socket's descriptor.
    case listener = 1
    /// `a`: the listener's descriptor, closed right after this entry.
    case listenerClosed = 2
    /// `a`: the VM's connection's descriptor, `b`: the VM's pid.
    case connection = 3
    /// The memory file served from: `a` its size, `b` its inode (a successor maps the same path and checks it).
    case memoryFile = 4
    /// One guest region, first half: `a` its base address in the VM, `b` its size. Always followed by its
    /// `regionFile`.
    case regionAddress = 5
    /// One guest region, second half: `a` its offset in the memory file, `b` its page size.
    case regionFile = 6
}

extension GuestMemoryMapping {
    /// The journal entries that record `mappings` (two per region).
    static func journalEntries(_ mappings: [GuestMemoryMapping]) -> [RestoreJournal.Entry] {
        mappings.flatMap { m in
            [RestoreJournal.Entry.frontEnd(kind: FirecrackerJournalEntry.regionAddress.rawValue,
                                           a: Int64(bitPattern: m.baseHostVirtAddr), b: Int64(bitPattern: m.size)),
             .frontEnd(kind: FirecrackerJournalEntry.regionFile.rawValue,
                       a: Int64(bitPattern: m.offset), b: Int64(bitPattern: m.pageSize))]
        }
    }

    /// The guest memory as the engine serves it: every page of every (validated) region pending, its data at the
    /// region's offset in `memory`. The one assembly, for a handshake and for a journal's regions alike.
    static func addressSpace(_ mappings: [GuestMemoryMapping], memory: MappedFile) -> AddressSpace {
        let pageSize = Int(mappings[0].pageSize)
        let extents = mappings.map { m in
            LazyExtent(start: m.baseHostVirtAddr, dumpAddress: m.offset, data: memory.base! + Int(m.offset),
                       pageCount: Int(m.size) / pageSize, pageSize: pageSize)
        }
        return AddressSpace(extents: extents, pageSize: pageSize)
    }
}

/// What a Firecracker restore's journal says about its front end, replayed from its entries in order.
struct FirecrackerJournalState {
    var listener: Int32?
    var connection: (descriptor: Int32, pid: Int32)?
    var memoryFile: (size: UInt64, inode: UInt64)?
    /// The regions of the handshake (raw, as recorded; `validated(against:)` checks them).
    var regions: [GuestMemoryMapping] = []

    init(_ entries: [(kind: UInt32, a: Int64, b: Int64)]) throws(RestoreJournal.AdoptionRefusal) {
        var half: (base: UInt64, size: UInt64)?
        for (index, entry) in entries.enumerated() {
            let a = UInt64(bitPattern: entry.a), b = UInt64(bitPattern: entry.b)
            guard let kind = FirecrackerJournalEntry(rawValue: entry.kind) else {
                throw .corrupt(index: index, "unknown Firecracker journal entry \(entry.kind)")
            }
            if (half != nil) != (kind == .regionFile) {
                throw .corrupt(index: index, "a guest region recorded in part")
            }
            switch kind {
            case .listener: listener = Int32(truncatingIfNeeded: entry.a)
            case .listenerClosed: listener = nil
            case .connection: connection = (Int32(truncatingIfNeeded: entry.a), Int32(truncatingIfNeeded: entry.b))
            case .memoryFile: memoryFile = (a, b)
            case .regionAddress: half = (a, b)
            case .regionFile:
                regions.append(GuestMemoryMapping(baseHostVirtAddr: half!.base, size: half!.size, offset: a, pageSize: b))
                half = nil
            }
        }
        if half != nil { throw .corrupt(index: entries.count, "a guest region recorded in part") }
    }

    /// The regions checked again (as the handshake's were) against `memory`, which must be the file the predecessor
    /// served from: same inode and size.
    func validated(against memory: MappedFile) throws(RestoreJournal.AdoptionRefusal) -> [GuestMemoryMapping] {
        guard let memoryFile else { throw .source("the journal does not name the memory file's identity") }
        guard memoryFile.size == UInt64(memory.size), memoryFile.inode == memory.inode else {
            throw .source("\(memory.path) is not the memory file the restore began with (size \(memory.size), "
                          + "inode \(memory.inode); the journal says size \(memoryFile.size), inode \(memoryFile.inode))")
        }
        if regions.isEmpty { return [] }
        do {
            return try GuestMemoryMapping.validate(regions, fileSize: UInt64(memory.size))
        } catch {
            throw .source("the journaled guest regions: \(error)")
        }
    }
}

extension FirecrackerSession {
    /// For `RestoreEngine.adopt`: the VM's guest memory as the handshake gave it, from the front end's entries
    /// recorded before its task (checked again against `memory`, which must be the same file).
    public static func addressSpace(journaled frontEnd: [(kind: UInt32, a: Int64, b: Int64)], memory: MappedFile)
        throws(RestoreJournal.AdoptionRefusal) -> AddressSpace
    {
        let mappings = try FirecrackerJournalState(frontEnd).validated(against: memory)
        guard !mappings.isEmpty else { throw .corrupt(index: frontEnd.count, "a VM task without guest regions") }
        return GuestMemoryMapping.addressSpace(mappings, memory: memory)
    }
}
