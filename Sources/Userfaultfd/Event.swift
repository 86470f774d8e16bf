import CUserfaultfd

/// The flags of a page-fault message (`UFFD_PAGEFAULT_FLAG_*`).
public struct PageFaultFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let write = PageFaultFlags(rawValue: CUserfaultfd_PAGEFAULT_FLAG_WRITE)
    public static let writeProtect = PageFaultFlags(rawValue: CUserfaultfd_PAGEFAULT_FLAG_WP)
    public static let minor = PageFaultFlags(rawValue: CUserfaultfd_PAGEFAULT_FLAG_MINOR)
}

/// One message read from a uffd (`struct uffd_msg`), decoded.
public enum Event: Sendable, Hashable {
    /// A thread touched a missing page. `address` is page-aligned unless `exact_address` was negotiated;
    /// `threadID` is 0 unless `thread_id` was negotiated.
    case pageFault(address: UInt64, flags: PageFaultFlags, threadID: UInt32)
    /// The process forked. `childDescriptor` is a new uffd for the child, already installed in *our* fd table;
    /// whoever handles the event owns it (see `Userfaultfd(adopting:)`).
    case fork(childDescriptor: Int32)
    /// `mremap` moved `length` bytes from `from` to `to`; not-yet-delivered pages now live at `to`.
    case remap(from: UInt64, to: UInt64, length: UInt64)
    /// `madvise(MADV_DONTNEED/MADV_REMOVE)` dropped `[start, end)`; it stays registered and must read zeros.
    case remove(start: UInt64, end: UInt64)
    /// `munmap` (or a shrinking `mremap`) removed `[start, end)` from the address space.
    case unmap(start: UInt64, end: UInt64)
}

/// A message whose event code this module does not know. Carries the raw 32 bytes.
public struct UnknownEvent: Error, Sendable, Hashable, CustomStringConvertible {
    public let code: UInt8
    public let bytes: [UInt8]
    public init(code: UInt8, bytes: [UInt8]) {
        self.code = code
        self.bytes = bytes
    }
    public var description: String { "unknown userfaultfd event code 0x\(String(code, radix: 16))" }
}

extension Event {
    /// The size of one `struct uffd_msg`.
    public static let messageSize = Int(CUserfaultfd_MSG_SIZE)

    /// Decodes one 32-byte `uffd_msg` (offsets are pinned by `_Static_assert`s in CUserfaultfd.h).
    @inlinable
    public init(message: UnsafeRawPointer) throws(UnknownEvent) {
        let code = message.load(as: UInt8.self)
        func u64(_ offset: Int) -> UInt64 { message.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
        switch code {
        case CUserfaultfd_EVENT_PAGEFAULT:
            self = .pageFault(
                address: u64(16), flags: PageFaultFlags(rawValue: u64(8)),
                threadID: message.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
        case CUserfaultfd_EVENT_FORK:
            self = .fork(childDescriptor: message.loadUnaligned(fromByteOffset: 8, as: Int32.self))
        case CUserfaultfd_EVENT_REMAP:
            self = .remap(from: u64(8), to: u64(16), length: u64(24))
        case CUserfaultfd_EVENT_REMOVE:
            self = .remove(start: u64(8), end: u64(16))
        case CUserfaultfd_EVENT_UNMAP:
            self = .unmap(start: u64(8), end: u64(16))
        default:
            throw UnknownEvent(code: code, bytes: Array(UnsafeRawBufferPointer(start: message, count: 32)))
        }
    }

    /// The messages in the leading slots of `capacity` at `messages` whose event code is not zero (as a read after
    /// `EventBatch.clear` leaves its memory): what that read returned, found again without its count.
    public static func decodeLeading(_ messages: UnsafeRawPointer, capacity: Int) -> [Result<Event, UnknownEvent>] {
        var result: [Result<Event, UnknownEvent>] = []
        for i in 0..<capacity {
            let message = messages + i * messageSize
            guard message.load(as: UInt8.self) != 0 else { break }
            result.append(Result { () throws(UnknownEvent) -> Event in try Event(message: message) })
        }
        return result
    }

    /// True for the events that make the kernel refuse copies until they are read (everything but faults).
    public var isNonCooperative: Bool {
        if case .pageFault = self { return false }
        return true
    }
}

/// A reusable buffer for reading messages in batches, so the fault path does not allocate.
public struct EventBatch: ~Copyable {
    @usableFromInline let storage: UnsafeMutableRawPointer
    private let owned: Bool
    public let capacity: Int
    public private(set) var count: Int = 0

    public init(capacity: Int = 64) {
        precondition(capacity > 0)
        self.capacity = capacity
        storage = .allocate(byteCount: capacity * Event.messageSize, alignment: 8)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * Event.messageSize)
        owned = true
    }

    /// A batch that reads into memory it does not own (`capacity` messages at `storage`, 8-byte aligned, zeroed;
    /// e.g. a shared file that outlives this process: what the kernel handed over survives it).
    public init(readingInto storage: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity > 0 && Int(bitPattern: storage) % 8 == 0)
        self.storage = storage
        self.capacity = capacity
        owned = false
    }

    deinit { if owned { storage.deallocate() } }

    /// Reads as many queued messages as fit. Returns the count; 0 when nothing is queued (`EAGAIN`).
    public mutating func read(from uffd: borrowing Userfaultfd) throws(UserfaultfdError) -> Int {
        count = try uffd.readMessages(into: UnsafeMutableRawBufferPointer(
            start: storage, count: capacity * Event.messageSize))
        return count
    }

    /// Zeroes the event code of the slots the last read filled. Called before a read, it makes the messages that
    /// read returns exactly the leading slots with a non-zero code (`Event.decodeLeading`), whether or not the
    /// reader lived to see the count (a read into shared memory that outlives it).
    public mutating func clear() {
        for i in 0..<count { storage.storeBytes(of: 0, toByteOffset: i * Event.messageSize, as: UInt8.self) }
        count = 0
    }

    /// The `index`th message of the last read, decoded.
    @inlinable
    public subscript(index: Int) -> Result<Event, UnknownEvent> {
        precondition(index >= 0 && index < count)
        return Result { () throws(UnknownEvent) -> Event in
            try Event(message: UnsafeRawPointer(storage + index * Event.messageSize))
        }
    }
}
