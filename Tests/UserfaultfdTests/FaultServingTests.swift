import Glibc
import LinuxSupport
import SystemPackage
import Testing
import Userfaultfd

/// Serving missing-page faults of a separate process (`uffd-testee`), checked byte for byte.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct FaultServingTests {
    @Test func copyServesAFaultByteForByte() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 1, seed: 1)
        try testee.send("touch 2")
        let event = try testee.uffd.nextEvent()
        #expect(event == .pageFault(address: testee.address(ofPage: 2), flags: [], threadID: UInt32(testee.pid)))
        let outcome = testee.uffd.copy(to: testee.address(ofPage: 2), from: pattern.page(0), length: pattern.pageSize)
        #expect(outcome == .done(bytes: pattern.pageSize))
        let reply = try testee.receive("page")
        #expect(try reply.int(1) == 2)
        #expect(reply.payload == pattern.bytes(ofPage: 0))
        #expect(!testee.uffd.hasQueuedMessage)
    }

    @Test func zeroPageServesAFaultWithZeros() throws {
        let testee = try Testee(pages: 2)
        try testee.send("touch 1")
        let event = try testee.uffd.nextEvent()
        #expect(event == .pageFault(address: testee.address(ofPage: 1), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 1), length: testee.pageSize)
            == .done(bytes: testee.pageSize))
        let reply = try testee.receive("page")
        #expect(reply.payload == [UInt8](repeating: 0, count: testee.pageSize))
        // A zero page counts as present: a second fill is refused.
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 1), length: testee.pageSize) == .alreadyPresent)
    }

    /// EEXIST: the page is already there; the second copy changes nothing.
    @Test func copyOntoAPresentPageIsAlreadyPresent() throws {
        let testee = try Testee(pages: 2)
        let first = PagePattern(pages: 1, seed: 2)
        let second = PagePattern(pages: 1, seed: 3)
        let page = testee.address(ofPage: 1)
        #expect(testee.uffd.copy(to: page, from: first.page(0), length: first.pageSize) == .done(bytes: first.pageSize))
        #expect(testee.uffd.copy(to: page, from: second.page(0), length: second.pageSize) == .alreadyPresent)
        let reply = try testee.request("touch 1", expect: "page")
        #expect(reply.payload == first.bytes(ofPage: 0))
        #expect(!testee.uffd.hasQueuedMessage)
    }

    /// A copy over four pages whose third is present stops there: the kernel reports the two pages it filled
    /// (`EAGAIN` with `copy` = 2 pages). A copy whose *first* page is present fills nothing (`EEXIST`).
    @Test func copyStopsAtAPresentPage() throws {
        let testee = try Testee(pages: 4)
        let early = PagePattern(pages: 1, seed: 4)
        let pattern = PagePattern(pages: 4, seed: 5)
        let size = pattern.pageSize
        #expect(testee.uffd.copy(to: testee.address(ofPage: 2), from: early.page(0), length: size) == .done(bytes: size))

        let outcome = testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: 4 * size)
        #expect(outcome == .partial(bytes: 2 * size))
        #expect(testee.uffd.copy(to: testee.address(ofPage: 2), from: pattern.page(2), length: 2 * size)
            == .alreadyPresent)

        // Pages 0 and 1 hold the pattern, page 2 its earlier content, page 3 is still missing.
        for index in 0..<2 {
            let reply = try testee.request("touch \(index)", expect: "page")
            #expect(reply.payload == pattern.bytes(ofPage: index), "page \(index)")
        }
        #expect(try testee.request("touch 2", expect: "page").payload == early.bytes(ofPage: 0))
        #expect(!testee.uffd.hasQueuedMessage)
        try testee.send("touch 3")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 3), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.copy(to: testee.address(ofPage: 3), from: pattern.page(3), length: size) == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.bytes(ofPage: 3))
    }

    /// After the owner exits its mm is gone: copies report `ESRCH` as `.processGone`.
    @Test func copyAfterTheOwnerExitedIsProcessGone() throws {
        let testee = try Testee(pages: 2)
        let pattern = PagePattern(pages: 1, seed: 6)
        try testee.send("exit 7")
        let status = try testee.waitForExit()
        #expect(WaitStatus(status) == .exited(7), "raw wait status \(status)")
        let outcome = testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: pattern.pageSize)
        #expect(outcome == .processGone(.noSuchProcess))
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 1), length: pattern.pageSize)
            == .processGone(.noSuchProcess))
    }
}
