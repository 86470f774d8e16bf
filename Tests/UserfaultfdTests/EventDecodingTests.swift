import Testing
import Userfaultfd

/// `Event(message:)` over hand-made 32-byte `uffd_msg`s (little-endian, offsets as in `linux/userfaultfd.h`).
struct EventDecodingTests {
    /// A 32-byte message with `code` at byte 0 and the given little-endian fields at their offsets.
    static func message(code: UInt8, u64 fields: [Int: UInt64] = [:], u32 words: [Int: UInt32] = [:]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 32)
        bytes[0] = code
        bytes[1] = 0xee  // reserved fields are ignored
        for (offset, value) in fields {
            for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
        for (offset, value) in words {
            for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
        }
        return bytes
    }

    static func decode(_ bytes: [UInt8]) throws(UnknownEvent) -> Event {
        precondition(bytes.count == Event.messageSize)
        // Decode from an odd offset too: the decoder must not assume alignment.
        let shifted = [0] + bytes
        let fromShifted = shifted.withUnsafeBytes { raw in
            Result { () throws(UnknownEvent) in try Event(message: raw.baseAddress! + 1) }
        }
        let aligned = bytes.withUnsafeBytes { raw in
            Result { () throws(UnknownEvent) in try Event(message: raw.baseAddress!) }
        }
        #expect(aligned == fromShifted)
        return try aligned.get()
    }

    @Test func messageSizeIs32() { #expect(Event.messageSize == 32) }

    @Test func pageFault() throws {
        let bytes = Self.message(
            code: 0x12, u64: [8: 0x1 | 0x4, 16: 0x7f12_3456_7000], u32: [24: 4242])
        let event = try Self.decode(bytes)
        #expect(event == .pageFault(address: 0x7f12_3456_7000, flags: [.write, .minor], threadID: 4242))
        #expect(!event.isNonCooperative)
    }

    @Test func pageFaultWriteProtect() throws {
        let event = try Self.decode(Self.message(code: 0x12, u64: [8: 0x2, 16: 0x1000]))
        #expect(event == .pageFault(address: 0x1000, flags: [.writeProtect], threadID: 0))
    }

    @Test func fork() throws {
        let event = try Self.decode(Self.message(code: 0x13, u32: [8: 17, 12: 0xdead_beef]))
        #expect(event == .fork(childDescriptor: 17))
        #expect(event.isNonCooperative)
    }

    @Test func remap() throws {
        let event = try Self.decode(Self.message(code: 0x14, u64: [8: 0x1000_0000, 16: 0x2000_0000, 24: 0x3000]))
        #expect(event == .remap(from: 0x1000_0000, to: 0x2000_0000, length: 0x3000))
        #expect(event.isNonCooperative)
    }

    @Test func remove() throws {
        let event = try Self.decode(Self.message(code: 0x15, u64: [8: 0x5000, 16: 0x9000, 24: 0xffff]))
        #expect(event == .remove(start: 0x5000, end: 0x9000))
        #expect(event.isNonCooperative)
    }

    @Test func unmap() throws {
        let event = try Self.decode(Self.message(code: 0x16, u64: [8: 0xa000, 16: 0xc000]))
        #expect(event == .unmap(start: 0xa000, end: 0xc000))
        #expect(event.isNonCooperative)
    }

    @Test(arguments: [UInt8(0x00), 0x11, 0x17, 0xff])
    func unknownCodeIsAnUnknownEvent(code: UInt8) throws {
        let bytes = Self.message(code: code, u64: [8: 0x0102_0304_0506_0708])
        do {
            let event = try Self.decode(bytes)
            Issue.record("decoded \(event) from unknown code \(code)")
        } catch {
            #expect(error.code == code)
            #expect(error.bytes == bytes)
            #expect(error.description.contains(String(code, radix: 16)))
        }
    }
}
