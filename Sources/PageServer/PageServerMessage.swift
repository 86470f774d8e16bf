/// The page server's commands: the low 16 bits of `cmd` (CRIU's `PS_IOV_*`, `criu/page-xfer.c`).
public enum PageServerCommand {
    public static let add: UInt32 = 1
    public static let hole: UInt32 = 2
    public static let open: UInt32 = 3
    public static let open2: UInt32 = 4
    public static let parent: UInt32 = 5
    public static let addWithFlags: UInt32 = 6
    public static let get: UInt32 = 7
    public static let close: UInt32 = 0x1023
    public static let forceClose: UInt32 = 0x1024

    /// CRIU's name for a command, for log lines and errors.
    public static func name(_ command: UInt32) -> String {
        switch command {
        case add: return "PS_IOV_ADD"
        case hole: return "PS_IOV_HOLE"
        case open: return "PS_IOV_OPEN"
        case open2: return "PS_IOV_OPEN2"
        case parent: return "PS_IOV_PARENT"
        case addWithFlags: return "PS_IOV_ADD_F"
        case get: return "PS_IOV_GET"
        case close: return "PS_IOV_CLOSE"
        case forceClose: return "PS_IOV_FORCE_CLOSE"
        default: return "unknown command 0x" + String(command, radix: 16)
        }
    }
}

/// Pagemap flags carried in the high 16 bits of `cmd` (`PE_*`).
public enum PageServerFlags {
    public static let parent: UInt32 = 1
    public static let lazy: UInt32 = 2
    public static let present: UInt32 = 4
}

/// One page-server message header: `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; }` in
/// natural alignment — 32 bytes, `cmd` at 0, 4 bytes of padding, then 8, 16, 24 — in the host's byte order, as CRIU
/// writes it. `cmd = flags << 16 | command`.
public struct PageServerMessage: Sendable, Equatable, CustomStringConvertible {
    public static let size = 32

    public var cmd: UInt32
    public var pageCount: UInt64
    public var address: UInt64
    public var destination: UInt64

    public init(cmd: UInt32, pageCount: UInt64 = 0, address: UInt64 = 0, destination: UInt64 = 0) {
        self.cmd = cmd
        self.pageCount = pageCount
        self.address = address
        self.destination = destination
    }

    public init(command: UInt32, flags: UInt32, pageCount: UInt64 = 0, address: UInt64 = 0, destination: UInt64 = 0) {
        self.init(cmd: flags << 16 | command, pageCount: pageCount, address: address, destination: destination)
    }

    public var command: UInt32 { cmd & 0xffff }
    public var flags: UInt32 { cmd >> 16 }

    /// `PS_IOV_GET { nr_pages, vaddr = dump-time address, dst_id = virtual pid }`.
    public static func get(pid: Int32, address: UInt64, pageCount: Int) -> PageServerMessage {
        PageServerMessage(
            cmd: PageServerCommand.get, pageCount: UInt64(pageCount), address: address,
            destination: UInt64(UInt32(bitPattern: pid)))
    }

    /// The reply to a `PS_IOV_GET`: the request's address and pid with `PS_IOV_ADD_F | PE_PRESENT << 16`.
    public static func pages(answering request: PageServerMessage, pageCount: UInt64) -> PageServerMessage {
        PageServerMessage(
            command: PageServerCommand.addWithFlags, flags: PageServerFlags.present, pageCount: pageCount,
            address: request.address, destination: request.destination)
    }

    /// Writes the 32 bytes into `buffer` (at least `size` bytes; the padding is zero).
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.size)
        buffer.storeBytes(of: cmd, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: pageCount, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: address, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: destination, toByteOffset: 24, as: UInt64.self)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { encode(into: $0) }
        return out
    }

    /// Reads a header from the first 32 bytes of `buffer` (the padding is ignored, as CRIU ignores it).
    public init(decoding buffer: UnsafeRawBufferPointer) {
        precondition(buffer.count >= Self.size)
        cmd = buffer.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        pageCount = buffer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        address = buffer.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        destination = buffer.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    }

    public init(decoding bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { PageServerMessage(decoding: $0) }
    }

    public var description: String {
        let flagText = flags == 0 ? "" : " flags=0x\(String(flags, radix: 16))"
        return "\(PageServerCommand.name(command))\(flagText) nr_pages=\(pageCount) vaddr=0x\(String(address, radix: 16)) dst_id=\(destination)"
    }
}
