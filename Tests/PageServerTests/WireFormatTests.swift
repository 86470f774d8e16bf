import PageServer
import Testing

@Suite("Page-server wire format")
struct WireFormatTests {
    @Test("a header is 32 bytes: cmd at 0, zero padding, nr_pages at 8, vaddr at 16, dst_id at 24")
    func layout() {
        let message = PageServerMessage(
            command: PageServerCommand.addWithFlags, flags: PageServerFlags.present, pageCount: 0x0102_0304_0506_0708,
            address: 0x7f00_1234_5000, destination: 42)
        let bytes = message.bytes
        #expect(bytes.count == 32)
        #expect(message.cmd == 0x0004_0006)
        #expect(Array(bytes[0..<4]) == [0x06, 0x00, 0x04, 0x00])
        #expect(Array(bytes[4..<8]) == [0, 0, 0, 0])
        #expect(Array(bytes[8..<16]) == [0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01])
        #expect(Array(bytes[16..<24]) == [0x00, 0x50, 0x34, 0x12, 0x00, 0x7f, 0x00, 0x00])
        #expect(Array(bytes[24..<32]) == [42, 0, 0, 0, 0, 0, 0, 0])
        #expect(PageServerMessage(decoding: bytes) == message)
    }

    @Test("decode ignores the padding; command and flags split at bit 16")
    func decodePadding() {
        var bytes = PageServerMessage(cmd: PageServerCommand.get, pageCount: 3, address: 0x1000, destination: 1).bytes
        bytes[5] = 0xff
        let decoded = PageServerMessage(decoding: bytes)
        #expect(decoded.command == PageServerCommand.get)
        #expect(decoded.flags == 0)
        #expect(decoded.pageCount == 3 && decoded.address == 0x1000 && decoded.destination == 1)
    }

    @Test("command constants match CRIU's PS_IOV_*")
    func constants() {
        #expect(PageServerCommand.add == 1)
        #expect(PageServerCommand.hole == 2)
        #expect(PageServerCommand.open == 3)
        #expect(PageServerCommand.open2 == 4)
        #expect(PageServerCommand.parent == 5)
        #expect(PageServerCommand.addWithFlags == 6)
        #expect(PageServerCommand.get == 7)
        #expect(PageServerCommand.close == 0x1023)
        #expect(PageServerCommand.forceClose == 0x1024)
        #expect(PageServerFlags.present == 4 && PageServerFlags.lazy == 2 && PageServerFlags.parent == 1)
    }

    @Test("a GET carries the dump address and the virtual pid; the reply echoes both")
    func getAndReply() {
        let get = PageServerMessage.get(pid: 7, address: 0x5000, pageCount: 16)
        #expect(get.cmd == 7 && get.destination == 7 && get.address == 0x5000 && get.pageCount == 16)
        let reply = PageServerMessage.pages(answering: get, pageCount: 4)
        #expect(reply.cmd == (4 << 16 | 6))
        #expect(reply.address == 0x5000 && reply.destination == 7 && reply.pageCount == 4)
    }

    let request = PageServerMessage.get(pid: 3, address: 0x10000, pageCount: 8)

    @Test("a valid reply, full or shorter than asked, gives its page count; old PS_IOV_ADD is accepted")
    func validReplies() throws {
        #expect(try validateReply(.pages(answering: request, pageCount: 8), to: request) == 8)
        #expect(try validateReply(.pages(answering: request, pageCount: 1), to: request) == 1)
        let old = PageServerMessage(cmd: PageServerCommand.add, pageCount: 2, address: 0x10000, destination: 3)
        #expect(try validateReply(old, to: request) == 2)
    }

    @Test("invalid replies are errors naming what was wrong",
          arguments: [
            (PageServerMessage(cmd: PageServerCommand.get, pageCount: 8, address: 0x10000, destination: 3), "wrong command"),
            (PageServerMessage(cmd: 0xdead, pageCount: 8, address: 0x10000, destination: 3), "wrong command"),
            (PageServerMessage(command: 6, flags: 0, pageCount: 8, address: 0x10000, destination: 3), "without PE_PRESENT"),
            (PageServerMessage(command: 6, flags: 4, pageCount: 9, address: 0x10000, destination: 3), "oversized nr_pages 9"),
            (PageServerMessage(command: 6, flags: 4, pageCount: 8, address: 0x11000, destination: 3), "wrong address echoed: 0x11000"),
            (PageServerMessage(command: 6, flags: 4, pageCount: 8, address: 0x10000, destination: 4), "wrong pid echoed"),
            (PageServerMessage(command: 6, flags: 4, pageCount: 0, address: 0x10000, destination: 3), "nr_pages 0"),
          ])
    func invalidReplies(reply: PageServerMessage, problem: String) {
        #expect {
            _ = try validateReply(reply, to: request)
        } throws: { error in
            guard let error = error as? PageServerError else { return false }
            return error.kind == .protocolViolation && error.message.contains(problem)
        }
    }
}
