import Atomics
import CGuardian
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The record of one restore that lets a successor daemon continue it after the daemon died (issue 15): a memory
/// file (`memfd`) held beside the restore's uffds — in the guardian's shared descriptor table standalone, in the
/// service's file-descriptor store under systemd — so it outlives the daemon that writes it.
///
/// What it holds, and why that is enough:
/// - **the page source's description** (`sourceDescription`, opaque bytes the front end chooses: image directory,
///   page server address and TLS options, log settings ...), from which a successor rebuilds every task's initial
///   address space;
/// - **every layout change the engine applied, in order** (`Entry`): each task and the descriptor number of its
///   uffd, each fork with the child uffd's number, each remap/remove/unmap, each retirement (uffd closed), the
///   zombies, "all tasks announced", and the front end's own progress (`Entry.frontEnd`). Deliveries are *not*
///   recorded: a successor re-delivers every page still in the rebuilt layout, and `UFFDIO_COPY` onto a page that is
///   present fails with `EEXIST` (counted as delivered) and never overwrites what the process wrote since;
/// - **the read area** (`beginUffdRead(process:)` / `endUffdRead()`): the engine reads every batch of uffd
///   messages straight into the journal's memory, having noted whose uffd it reads and how many entries were
///   recorded before. A daemon killed between a read and its record leaves the messages the kernel handed it there
///   (a fork's child uffd number, a remove, a remap): the successor records the events among them that are not
///   recorded yet (`completeInterruptedRead()`) and goes on — a kill at any instruction of the event path is
///   continued, not only one between batches;
/// - **the word area** (`beginWordRead(socket:)` / `endWordRead()`): the same for a front end's protocol words (the
///   pid words and RSTF of CRIU's socket, taken whole into the journal's memory once queued); the front end finishes
///   the record of a word its predecessor died holding;
/// - **the reading marker** (`beginReading()` / `endReading()`): set by a front end around a read of its own socket
///   that nothing can find again (an accepted connection, a word that came in parts) and cleared once what was read is
///   recorded. A journal whose marker is set cannot vouch for the layout, and neither can a journal marked failed
///   or overflowed: then the successor refuses (`AdoptionRefusal`) and the restore falls back to what happens
///   without hand-over — its processes are ended, never run on a wrong page;
/// - **the guardian's areas**: the processes the guardian knew (pid and start time) and the restorers, written by
///   the guardian when its daemon died (raw `pwrite`, see `Sources/CGuardian/guardian.c`) and loaded by the
///   successor's guardian; the hand-over count, which bounds how many successors are started.
///
/// The layout is defined once, in `CGuardian.h` (`LP_JOURNAL_*`). Writes go straight into the shared mapping; the
/// entry count and the marker are stored atomically after the data they publish, so a process killed at any
/// instruction leaves a journal that is either consistent or marked. Every entry carries a check word over its
/// fields and its index: a corrupt or foreign file is refused, never trusted.
///
/// One writer: the engine's loop thread (and the front end on the same thread). Not for concurrent use.
///
/// Use (writer): `let journal = try RestoreJournal(description: bytes)`; set `engine.journal = journal` before the
/// first task is added; the engine records its entries and reads its events through the read area; the front end
/// records its own progress with `record(.frontEnd(...))` inside `beginReading()`/`endReading()`; tell the guardian
/// the descriptor (`GuardianLink.journal(_:handover:)`). Use (successor): `RestoreJournal(adopting: fd)`, then
/// `RestoreEngine.adopt(journal:...)`.
public final class RestoreJournal: @unchecked Sendable {
    /// One recorded step of the restore, in the order it happened. `process` values are the engine's process ids
    /// (stable across hand-overs: a successor's engine keeps them); `uffd` values are descriptor numbers in the
    /// writing daemon's table (a successor maps them with its `descriptor` resolver).
    public enum Entry: Sendable, Equatable {
        /// A task handed over its uffd (`RestoreEngine.addTask`); its pages are the source's for `imagePid`.
        case task(process: Int, imagePid: Int32, uffd: Int32)
        /// `parent` forked; the child (engine id `child`) has the parent's layout at this point, and its uffd.
        case fork(parent: Int, child: Int, uffd: Int32)
        /// `mremap` moved `[from, from + length)` to `to`.
        case remap(process: Int, from: UInt64, to: UInt64, length: UInt64)
        /// `madvise(MADV_DONTNEED)`: `[start, end)` reads zeros from now on.
        case remove(process: Int, start: UInt64, end: UInt64)
        /// `munmap`: `[start, end)` is gone.
        case unmap(process: Int, start: UInt64, end: UInt64)
        /// The engine let go of the process (completed or exited): its uffd is closed (right after this entry).
        case retired(process: Int)
        /// A zombie task was announced.
        case zombie(pid: Int32)
        /// Every task is announced (CRIU's `RSTF`).
        case allAnnounced
        /// The front end's own progress (opaque to the engine): `kind` is the front end's, `a` and `b` its values
        /// (e.g. the CRIU front end: the listener's and the restorer connection's descriptor numbers, a pid word
        /// read whose uffd has not come yet).
        case frontEnd(kind: UInt32, a: Int64, b: Int64)
    }

    /// Why a journal cannot be used to continue its restore.
    public enum AdoptionRefusal: Error, Sendable, Equatable, CustomStringConvertible {
        /// Not a journal of this version (magic, version or size wrong).
        case notAJournal(String)
        /// The daemon died between reading messages and recording them.
        case readingEvents
        /// The restore had failed or was cancelled before the daemon died.
        case failed
        /// More entries than the file holds were recorded.
        case overflowed
        /// Entry `index` is damaged or contradicts the ones before it.
        case corrupt(index: Int, String)
        /// A uffd the journal names is not open (or is not a uffd).
        case missingUffd(process: Int, descriptor: Int32)
        /// A uffd is open that the journal does not account for.
        case unknownUffd(descriptor: Int32)
        /// The page source cannot give the layout of a task again.
        case source(String)
        /// The operator turned hand-over off.
        case handoverDisabled

        public var description: String {
            switch self {
            case .notAJournal(let why): return "not a restore journal: \(why)"
            case .readingEvents: return "the daemon died between reading events and recording them"
            case .failed: return "the restore had failed, or its guardian had ended its processes, before the daemon died"
            case .overflowed: return "the journal overflowed"
            case .corrupt(let index, let why): return "journal entry \(index) is corrupt: \(why)"
            case .missingUffd(let process, let fd): return "the uffd of process \(process) (descriptor \(fd)) is not open"
            case .unknownUffd(let fd): return "descriptor \(fd) is a uffd the journal does not account for"
            case .source(let why): return "the page source cannot be rebuilt: \(why)"
            case .handoverDisabled: return "hand-over is turned off"
            }
        }

        /// A short word for counting fallbacks by reason (`Scripts/restart-kills`).
        public var reasonWord: String {
            switch self {
            case .notAJournal: return "not-a-journal"
            case .readingEvents: return "reading-events"
            case .failed: return "failed"
            case .overflowed: return "overflowed"
            case .corrupt: return "corrupt"
            case .missingUffd: return "missing-uffd"
            case .unknownUffd: return "unknown-uffd"
            case .source: return "source"
            case .handoverDisabled: return "handover-disabled"
            }
        }
    }

    /// Where the entries start in the file (`LP_JOURNAL_ENTRIES_OFFSET`).
    public static let entriesOffset = Int(LP_JOURNAL_ENTRIES_OFFSET)
    /// The size of one entry in the file.
    public static let entrySize = 40
    /// The most entries one journal holds (the file is sparse: only what is written takes memory).
    public static let defaultCapacity = 4 << 20
    public static let version: UInt32 = 2

    public let file: SharedMemoryFile
    /// The memory file's descriptor (close-on-exec; the guardian clears that flag on the hand-over).
    public var descriptor: Int32 { file.descriptor }
    public let capacity: Int

    /// Creates a journal for a new restore, holding `description` (at most `LP_JOURNAL_DESCRIPTION_MAX` bytes).
    /// `maxHandovers`: how many successors the guardian may start over the restore's life (0: none).
    public init(description: [UInt8], maxHandovers: Int = 3, capacity: Int = RestoreJournal.defaultCapacity) throws {
        guard description.count <= Int(LP_JOURNAL_DESCRIPTION_MAX) else {
            throw JournalError("the page source's description is \(description.count) bytes, more than the journal "
                               + "holds (\(LP_JOURNAL_DESCRIPTION_MAX))")
        }
        self.capacity = capacity
        file = try SharedMemoryFile(name: "lazy-pages-journal",
                                    size: Int(LP_JOURNAL_ENTRIES_OFFSET) + capacity * Self.entrySize)
        let base = file.base
        base.storeBytes(of: Self.version, toByteOffset: Int(LP_JOURNAL_VERSION_OFFSET), as: UInt32.self)
        base.storeBytes(of: UInt32(max(0, maxHandovers)), toByteOffset: Int(LP_JOURNAL_MAX_HANDOVERS_OFFSET),
                        as: UInt32.self)
        base.storeBytes(of: UInt32(description.count), toByteOffset: Int(LP_JOURNAL_DESCRIPTION_LENGTH_OFFSET),
                        as: UInt32.self)
        description.withUnsafeBytes {
            if let from = $0.baseAddress {
                (base + Int(LP_JOURNAL_DESCRIPTION_OFFSET)).copyMemory(from: from, byteCount: $0.count)
            }
        }
        // The magic last: a file killed while being set up is not a journal.
        atomic64(LP_JOURNAL_MAGIC_OFFSET).store(UInt64(LP_JOURNAL_MAGIC), ordering: .releasing)
    }

    /// Maps an inherited journal (`descriptor` stays open, owned by this object from now on). Checks the header
    /// only; `RestoreEngine.adopt` reads and checks the entries.
    public init(adopting descriptor: Int32) throws(AdoptionRefusal) {
        let file: SharedMemoryFile
        do {
            file = try SharedMemoryFile(mapping: descriptor, taking: true)
        } catch {
            throw .notAJournal("\(error)")
        }
        guard file.size > Int(LP_JOURNAL_ENTRIES_OFFSET) else { throw .notAJournal("\(file.size) bytes") }
        self.file = file
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        capacity = (file.size - Int(LP_JOURNAL_ENTRIES_OFFSET)) / Self.entrySize
        guard atomic64(LP_JOURNAL_MAGIC_OFFSET).load(ordering: .acquiring) == UInt64(LP_JOURNAL_MAGIC) else {
            throw .notAJournal("bad magic")
        }
        let version = file.base.load(fromByteOffset: Int(LP_JOURNAL_VERSION_OFFSET), as: UInt32.self)
        guard version == Self.version else { throw .notAJournal("version \(version), expected \(Self.version)") }
        guard Int(field32(LP_JOURNAL_DESCRIPTION_LENGTH_OFFSET)) <= Int(LP_JOURNAL_DESCRIPTION_MAX) else {
            throw .notAJournal("description length \(field32(LP_JOURNAL_DESCRIPTION_LENGTH_OFFSET))")
        }
    }

    // MARK: Reading the header

    /// The bytes the front end stored when the restore began.
    public var sourceDescription: [UInt8] {
        let length = Int(field32(LP_JOURNAL_DESCRIPTION_LENGTH_OFFSET))
        return Array(UnsafeRawBufferPointer(start: file.base + Int(LP_JOURNAL_DESCRIPTION_OFFSET), count: length))
    }

    /// Entries recorded so far.
    public var count: Int { Int(atomic64(LP_JOURNAL_COUNT_OFFSET).load(ordering: .acquiring)) }
    /// True while messages were read and not yet recorded (see the type's doc).
    public var isReading: Bool { atomic64(LP_JOURNAL_READING_OFFSET).load(ordering: .acquiring) != 0 }
    public var hasFailed: Bool { flags & UInt32(LP_JOURNAL_FLAG_FAILED) != 0 }
    public var hasOverflowed: Bool { flags & UInt32(LP_JOURNAL_FLAG_OVERFLOWED) != 0 }
    /// Hand-over turned off by the operator (`setHandover(enabled: false)`): the guardian ends the processes.
    public var handoverDisabled: Bool { flags & UInt32(LP_JOURNAL_FLAG_NO_HANDOVER) != 0 }
    /// Successors started so far (counted by the guardian) and the most it may start.
    public var handovers: Int { Int(field32(LP_JOURNAL_HANDOVERS_OFFSET)) }
    public var maxHandovers: Int { Int(field32(LP_JOURNAL_MAX_HANDOVERS_OFFSET)) }
    /// When (CLOCK_MONOTONIC, ns) the last guardian saw its daemon die; 0 if none did. A successor's first page
    /// served minus this is the pause the processes saw.
    public var diedAt: UInt64 { file.base.load(fromByteOffset: Int(LP_JOURNAL_DIED_AT_OFFSET), as: UInt64.self) }

    /// The processes the guardian knew when its daemon died (pid, start time): the successor's guardian loads them
    /// (`LP_GUARDIAN_JOURNAL`), so processes a restorer let go of are still ended if the restore fails later.
    public var knownProcesses: [(pid: Int32, start: UInt64)] {
        let n = min(Int(field32(LP_JOURNAL_KNOWN_COUNT_OFFSET)), Int(LP_JOURNAL_MAX_KNOWN))
        let area = file.base + Int(LP_JOURNAL_KNOWN_OFFSET)
        return (0..<n).map { i in
            (area.load(fromByteOffset: i * 16, as: Int32.self), area.load(fromByteOffset: i * 16 + 8, as: UInt64.self))
        }
    }

    /// The restorers the guardian knew when its daemon died.
    public var restorers: [Int32] {
        let n = min(Int(field32(LP_JOURNAL_RESTORER_COUNT_OFFSET)), Int(LP_JOURNAL_MAX_RESTORERS))
        let area = file.base + Int(LP_JOURNAL_RESTORERS_OFFSET)
        return (0..<n).map { area.load(fromByteOffset: $0 * 4, as: Int32.self) }
    }

    /// Every entry, checked (each one's check word; a count beyond the capacity). Does not judge the marker or the
    /// flags: `RestoreEngine.adopt` does.
    public func entries() throws(AdoptionRefusal) -> [Entry] { try entries(from: 0) }

    /// The entries from index `start` on (none when `start` is at or past the count), checked as `entries()`.
    public func entries(from start: Int) throws(AdoptionRefusal) -> [Entry] {
        let n = count
        guard n <= capacity else { throw .corrupt(index: n, "count \(n) beyond the capacity \(capacity)") }
        guard start < n else { return [] }
        var result: [Entry] = []
        result.reserveCapacity(n - max(0, start))
        for i in max(0, start)..<n { result.append(try entry(at: i)) }
        return result
    }

    // MARK: Writing

    /// Called after each entry is recorded, on the recording thread, before the recorder goes on (a service keeps
    /// the descriptors the journal names in step with it: a descriptor is stored before anything else happens, and
    /// dropped from the store before it is closed and its number reused). Set before the restore runs.
    public var afterRecording: (() -> Void)?

    /// Appends `entry` (after its bytes are in the file, the count is published). A journal that is full is marked
    /// overflowed: it cannot vouch for the restore any more (a successor then refuses; the restore itself goes on).
    public func record(_ entry: Entry) {
        defer { afterRecording?() }
        let n = count
        guard n < capacity else {
            setFlag(UInt32(LP_JOURNAL_FLAG_OVERFLOWED))
            return
        }
        let raw = RawEntry(entry)
        let at = file.base + Int(LP_JOURNAL_ENTRIES_OFFSET) + n * Self.entrySize
        at.storeBytes(of: raw.kind, toByteOffset: 0, as: UInt32.self)
        at.storeBytes(of: raw.check(index: n), toByteOffset: 4, as: UInt32.self)
        at.storeBytes(of: raw.p, toByteOffset: 8, as: Int64.self)
        at.storeBytes(of: raw.x, toByteOffset: 16, as: UInt64.self)
        at.storeBytes(of: raw.y, toByteOffset: 24, as: UInt64.self)
        at.storeBytes(of: raw.z, toByteOffset: 32, as: UInt64.self)
        atomic64(LP_JOURNAL_COUNT_OFFSET).store(UInt64(n + 1), ordering: .releasing)
    }

    /// The read area's message slots (`LP_JOURNAL_UFFD_MESSAGES_MAX` of `Event.messageSize`, zero until used): the
    /// engine's `EventBatch` reads into it.
    public var uffdMessages: UnsafeMutableRawPointer { file.base + Int(LP_JOURNAL_UFFD_MESSAGES_OFFSET) }
    public static let uffdMessagesCapacity = Int(LP_JOURNAL_UFFD_MESSAGES_MAX)

    /// The engine is about to read the uffd of `process` into the read area (whose slots are zero): notes it, with
    /// the entries recorded so far, before the read.
    public func beginUffdRead(process: Int) {
        atomic64(LP_JOURNAL_UFFD_READ_BEFORE_OFFSET).store(UInt64(count), ordering: .relaxed)
        atomic64(LP_JOURNAL_UFFD_READ_OFFSET).store(UInt64(process + 1), ordering: .sequentiallyConsistent)
    }

    /// What the last `beginUffdRead` read is recorded.
    public func endUffdRead() {
        atomic64(LP_JOURNAL_UFFD_READ_OFFSET).store(0, ordering: .sequentiallyConsistent)
    }

    /// The read its daemon died in, if any: whose uffd, and the entries recorded before it.
    public var interruptedUffdRead: (process: Int, entriesBefore: Int)? {
        let word = atomic64(LP_JOURNAL_UFFD_READ_OFFSET).load(ordering: .acquiring)
        guard word != 0 else { return nil }
        return (Int(truncatingIfNeeded: word) - 1,
                Int(truncatingIfNeeded: atomic64(LP_JOURNAL_UFFD_READ_BEFORE_OFFSET).load(ordering: .acquiring)))
    }

    /// The word area: a front end takes a 4-byte word from its socket straight into it (`beginWordRead`), so a
    /// daemon killed before recording what the word said leaves the word to its successor.
    public var wordArea: UnsafeMutableRawPointer { file.base + Int(LP_JOURNAL_WORD_OFFSET) }

    /// A front end is about to take one whole word (already queued: it peeked) from `socket` into the word area:
    /// zeroes the area and notes the socket and the entries recorded so far, before the read.
    public func beginWordRead(socket: Int32) {
        wordArea.storeBytes(of: 0, as: Int32.self)
        atomic64(LP_JOURNAL_WORD_READ_BEFORE_OFFSET).store(UInt64(count), ordering: .relaxed)
        atomic64(LP_JOURNAL_WORD_READ_OFFSET).store(UInt64(UInt32(bitPattern: socket)) + 1,
                                                     ordering: .sequentiallyConsistent)
    }

    /// What the word said is recorded.
    public func endWordRead() {
        atomic64(LP_JOURNAL_WORD_READ_OFFSET).store(0, ordering: .sequentiallyConsistent)
    }

    /// The word read its daemon died in, if any: the socket, the word (0: not taken yet — a front end never
    /// accepts a zero word) and the entries recorded before it. The front end decides what the word meant.
    public var interruptedWordRead: (socket: Int32, word: Int32, entriesBefore: Int)? {
        let state = atomic64(LP_JOURNAL_WORD_READ_OFFSET).load(ordering: .acquiring)
        guard state != 0 else { return nil }
        return (Int32(truncatingIfNeeded: state - 1), wordArea.load(as: Int32.self),
                Int(truncatingIfNeeded: atomic64(LP_JOURNAL_WORD_READ_BEFORE_OFFSET).load(ordering: .acquiring)))
    }

    /// Sets the marker: messages are about to be read that are not recorded yet. Nests (a count).
    public func beginReading() {
        atomic64(LP_JOURNAL_READING_OFFSET).wrappingIncrement(ordering: .sequentiallyConsistent)
    }

    /// Clears one `beginReading()`: what was read is recorded (or was nothing the journal needs).
    public func endReading() {
        atomic64(LP_JOURNAL_READING_OFFSET).wrappingDecrement(ordering: .sequentiallyConsistent)
    }

    /// The restore failed or was cancelled: no successor may continue it (its processes are being ended).
    public func markFailed() { setFlag(UInt32(LP_JOURNAL_FLAG_FAILED)) }

    /// Turns hand-over off (`--no-handover`) or on: the guardian reads this flag when its daemon dies.
    public func setHandover(enabled: Bool) {
        let flag = UInt32(LP_JOURNAL_FLAG_NO_HANDOVER)
        let word = atomic32(LP_JOURNAL_FLAGS_OFFSET)
        if enabled { word.bitwiseAndThenLoad(with: ~flag, ordering: .sequentiallyConsistent) }
        else { word.bitwiseOrThenLoad(with: flag, ordering: .sequentiallyConsistent) }
    }

    // MARK: Internals

    private var flags: UInt32 { atomic32(LP_JOURNAL_FLAGS_OFFSET).load(ordering: .acquiring) }

    private func setFlag(_ flag: UInt32) {
        atomic32(LP_JOURNAL_FLAGS_OFFSET).bitwiseOrThenLoad(with: flag, ordering: .sequentiallyConsistent)
    }

    private func field32(_ offset: Int) -> UInt32 {
        file.base.load(fromByteOffset: Int(offset), as: UInt32.self)
    }

    private func atomic64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (file.base + Int(offset)).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    private func atomic32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (file.base + Int(offset)).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    private func entry(at i: Int) throws(AdoptionRefusal) -> Entry {
        let at = file.base + Int(LP_JOURNAL_ENTRIES_OFFSET) + i * Self.entrySize
        let raw = RawEntry(kind: at.load(fromByteOffset: 0, as: UInt32.self), p: at.load(fromByteOffset: 8, as: Int64.self),
                           x: at.load(fromByteOffset: 16, as: UInt64.self), y: at.load(fromByteOffset: 24, as: UInt64.self),
                           z: at.load(fromByteOffset: 32, as: UInt64.self))
        guard at.load(fromByteOffset: 4, as: UInt32.self) == raw.check(index: i) else {
            throw .corrupt(index: i, "check word mismatch")
        }
        guard let entry = raw.entry else { throw .corrupt(index: i, "unknown kind \(raw.kind)") }
        return entry
    }
}

/// A journal could not be created.
public struct JournalError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// An entry as stored: a kind and four words.
private struct RawEntry {
    var kind: UInt32
    var p: Int64
    var x: UInt64
    var y: UInt64
    var z: UInt64

    init(kind: UInt32, p: Int64, x: UInt64, y: UInt64, z: UInt64) {
        (self.kind, self.p, self.x, self.y, self.z) = (kind, p, x, y, z)
    }

    init(_ entry: RestoreJournal.Entry) {
        switch entry {
        case .task(let process, let pid, let uffd):
            self.init(kind: 1, p: Int64(process), x: UInt64(UInt32(bitPattern: pid)), y: UInt64(UInt32(bitPattern: uffd)), z: 0)
        case .fork(let parent, let child, let uffd):
            self.init(kind: 2, p: Int64(parent), x: UInt64(child), y: UInt64(UInt32(bitPattern: uffd)), z: 0)
        case .remap(let process, let from, let to, let length):
            self.init(kind: 3, p: Int64(process), x: from, y: to, z: length)
        case .remove(let process, let start, let end):
            self.init(kind: 4, p: Int64(process), x: start, y: end, z: 0)
        case .unmap(let process, let start, let end):
            self.init(kind: 5, p: Int64(process), x: start, y: end, z: 0)
        case .retired(let process):
            self.init(kind: 6, p: Int64(process), x: 0, y: 0, z: 0)
        case .zombie(let pid):
            self.init(kind: 7, p: Int64(pid), x: 0, y: 0, z: 0)
        case .allAnnounced:
            self.init(kind: 8, p: 0, x: 0, y: 0, z: 0)
        case .frontEnd(let kind, let a, let b):
            self.init(kind: 9, p: Int64(kind), x: UInt64(bitPattern: a), y: UInt64(bitPattern: b), z: 0)
        }
    }

    var entry: RestoreJournal.Entry? {
        let i32 = { (v: UInt64) in Int32(bitPattern: UInt32(truncatingIfNeeded: v)) }
        switch kind {
        case 1: return .task(process: Int(p), imagePid: i32(x), uffd: i32(y))
        case 2: return .fork(parent: Int(p), child: Int(x), uffd: i32(y))
        case 3: return .remap(process: Int(p), from: x, to: y, length: z)
        case 4: return .remove(process: Int(p), start: x, end: y)
        case 5: return .unmap(process: Int(p), start: x, end: y)
        case 6: return .retired(process: Int(p))
        case 7: return .zombie(pid: Int32(truncatingIfNeeded: p))
        case 8: return .allAnnounced
        case 9: return .frontEnd(kind: UInt32(truncatingIfNeeded: p), a: Int64(bitPattern: x), b: Int64(bitPattern: y))
        default: return nil
        }
    }

    /// FNV-1a over the fields and the entry's index (an entry copied to another slot, or a slot never written,
    /// fails it).
    func check(index: Int) -> UInt32 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for word in [UInt64(kind), UInt64(bitPattern: p), x, y, z, UInt64(index), 0x4c50_4a52] {
            hash = (hash ^ word) &* 0x0000_0100_0000_01b3
        }
        return UInt32(truncatingIfNeeded: hash ^ (hash >> 32)) | 1  // never 0: an unwritten slot fails
    }
}
