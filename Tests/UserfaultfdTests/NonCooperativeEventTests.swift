import Glibc
import Testing
import Userfaultfd

/// Fork, remap, remove and unmap events raised by a separate process, and what they mean for serving.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct NonCooperativeEventTests {
    /// The fork event hands over a uffd for the child: pages present at fork time are present in the child,
    /// missing ones fault on the child's uffd (not the parent's) and are served there.
    @Test func forkEventChildUffdServesTheChildsFault() throws {
        let testee = try Testee(pages: 4)
        let before = PagePattern(pages: 2, seed: 20)
        let forChild = PagePattern(pages: 1, seed: 21)
        let size = before.pageSize
        #expect(testee.uffd.copy(to: testee.address(ofPage: 0), from: before.page(0), length: size) == .done(bytes: size))

        try testee.send("fork 0 1")
        guard case .fork(let childDescriptor) = try testee.uffd.nextEvent() else {
            Issue.record("expected a fork event first")
            return
        }
        let child = Userfaultfd(adopting: childDescriptor)
        #expect(child.descriptor >= 0 && child.descriptor != testee.uffd.descriptor)
        let childPID = try testee.receive("forked").int(1)

        let present = try testee.receive("child")
        #expect(try present.int(1) == 0)
        #expect(present.payload == before.bytes(ofPage: 0))

        #expect(try child.nextEvent()
            == .pageFault(address: testee.address(ofPage: 1), flags: [], threadID: UInt32(childPID)))
        #expect(child.copy(to: testee.address(ofPage: 1), from: forChild.page(0), length: size) == .done(bytes: size))
        let served = try testee.receive("child")
        #expect(try served.int(1) == 1)
        #expect(served.payload == forChild.bytes(ofPage: 0))

        let waited = try testee.request("wait", expect: "waited")
        #expect(try waited.int(1) == childPID)
        #expect(try waited.int(2) == 0)

        // The child's copy did not reach the parent: its page 1 is still missing and faults on the parent's uffd.
        #expect(!testee.uffd.hasQueuedMessage)
        try testee.send("touch 1")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 1), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.copy(to: testee.address(ofPage: 1), from: before.page(1), length: size) == .done(bytes: size))
        #expect(try testee.receive("page").payload == before.bytes(ofPage: 1))
    }

    /// `mremap` moves the registration: present pages go along, missing ones fault at the new address.
    @Test func remapEventCarriesOldAndNewAddress() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 4, seed: 22)
        let size = pattern.pageSize
        let oldBase = testee.base
        #expect(testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: size) == .done(bytes: size))

        try testee.send("mremap")
        let event = try testee.uffd.nextEvent()
        // Seen on 6.18: the move is followed by an UNMAP of the old range (move_vma unmaps the old VMA, which still
        // carries the uffd context). mremap returns only once both are read. A monitor applying events in order
        // has already moved its bookkeeping, so the UNMAP finds nothing left at the old address.
        let trailing = try testee.uffd.nextEvent()
        let newBase = try testee.receive("remapped").hex(1)
        #expect(newBase != oldBase)
        #expect(event == .remap(from: oldBase, to: newBase, length: UInt64(4 * size)))
        #expect(trailing == .unmap(start: oldBase, end: oldBase + UInt64(4 * size)))
        #expect(!testee.uffd.hasQueuedMessage)
        testee.base = newBase

        #expect(try testee.request("touch 0", expect: "page").payload == pattern.bytes(ofPage: 0))
        try testee.send("touch 2")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: newBase + UInt64(2 * size), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.copy(to: newBase + UInt64(2 * size), from: pattern.page(2), length: size)
            == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.bytes(ofPage: 2))
        // The old address is no longer a registered mapping.
        #expect(testee.uffd.copy(to: oldBase + UInt64(3 * size), from: pattern.page(3), length: size)
            == .rangeGone(.noSuchFileOrDirectory))
    }

    /// `madvise(MADV_DONTNEED)` drops served pages; the range stays registered and faults again.
    @Test func removeEventCarriesTheDroppedRange() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 2, seed: 23)
        let size = pattern.pageSize
        #expect(testee.uffd.copy(to: testee.address(ofPage: 0), from: pattern.page(0), length: 2 * size)
            == .done(bytes: 2 * size))

        try testee.send("dontneed 0 2")
        #expect(try testee.uffd.nextEvent()
            == .remove(start: testee.address(ofPage: 0), end: testee.address(ofPage: 2)))
        _ = try testee.receive("dontneed")

        try testee.send("touch 1")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 1), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.zeroPage(at: testee.address(ofPage: 1), length: size) == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.zeroPage)
    }

    /// `munmap` of a sub-range: the event names it, copying there fails, the rest still works.
    @Test func unmapEventCarriesTheUnmappedRange() throws {
        let testee = try Testee(pages: 4)
        let pattern = PagePattern(pages: 1, seed: 24)
        let size = pattern.pageSize

        try testee.send("unmap 2 2")
        #expect(try testee.uffd.nextEvent()
            == .unmap(start: testee.address(ofPage: 2), end: testee.address(ofPage: 4)))
        _ = try testee.receive("unmapped")
        #expect(testee.uffd.copy(to: testee.address(ofPage: 2), from: pattern.page(0), length: size)
            == .rangeGone(.noSuchFileOrDirectory))

        try testee.send("touch 1")
        #expect(try testee.uffd.nextEvent()
            == .pageFault(address: testee.address(ofPage: 1), flags: [], threadID: UInt32(testee.pid)))
        #expect(testee.uffd.copy(to: testee.address(ofPage: 1), from: pattern.page(0), length: size) == .done(bytes: size))
        #expect(try testee.receive("page").payload == pattern.bytes(ofPage: 0))
    }
}
