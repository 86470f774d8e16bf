import Glibc
import Testing
import Userfaultfd

/// The EAGAIN rule: while a non-cooperative event is queued and unread, fills are refused and do nothing.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct EagainRuleTests {
    /// A fork blocks in the kernel until its event is read; meanwhile `copy` is `.retryAfterEvents` and fills
    /// nothing. Once the event is read, the very same copy fills the whole range (were any page filled before,
    /// it would now be `.alreadyPresent` or `.partial`).
    @Test func copyWithAForkEventQueuedIsRetryAfterEvents() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 2, seed: 30)
        let size = pattern.pageSize

        try testee.send("fork")
        try testee.uffd.waitUntilReadable()
        let refused = testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: 2 * size)
        #expect(refused == .retryAfterEvents)
        #expect(refused.bytesDone == 0)
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 2), length: size) == .retryAfterEvents)

        guard case .fork(let childDescriptor) = try testee.uffd.nextEvent() else {
            Issue.record("expected the fork event")
            return
        }
        Userfaultfd(adopting: childDescriptor).close()
        let childPID = try testee.receive("forked").int(1)

        #expect(testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: 2 * size)
            == .done(bytes: 2 * size))
        for index in 0..<2 {
            #expect(try testee.request("touch \(index)", expect: "page").payload == pattern.bytes(ofPage: index))
        }
        // The refused zeropage left page 2 missing: touching it faults.
        try testee.send("touch 2")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 2), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 2), length: size) == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.zeroPage)

        let waited = try testee.request("wait", expect: "waited")
        #expect(try waited.int(1) == childPID)
    }

    /// The same with `madvise(MADV_DONTNEED)` queued: the refused copy leaves the page missing, which the testee
    /// proves by faulting on it later; the retried copy then serves that fault.
    @Test func copyWithARemoveEventQueuedIsRetryAfterEvents() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 1, seed: 31)
        let size = pattern.pageSize

        try testee.send("dontneed 3 1")
        try testee.uffd.waitUntilReadable()
        #expect(testee.uffd.copy(to: testee.address(ofPage: 2), from: pattern.page(0), length: size)
            == .retryAfterEvents)

        #expect(try testee.uffd.nextEvent()
            == .remove(start: testee.address(ofPage: 3), end: testee.address(ofPage: 4)))
        _ = try testee.receive("dontneed")
        #expect(!testee.uffd.hasQueuedMessage)

        try testee.send("touch 2")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 2), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.copy(to: testee.address(ofPage: 2), from: pattern.page(0), length: size)
            == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.bytes(ofPage: 0))
    }
}
