import Foundation
import LazyPagesControl
import Testing
@testable import LazyPagesService

/// The job record a restarted daemon re-adopts a job from: its two-slot, versioned, checksummed layout in a memory
/// file. A record that is torn, overwritten, of another version or damaged is refused with a reason, never read
/// as something else.
@Suite struct JobRecordTests {
    static let record = JobRecord(
        id: "7", owner: .init(uid: 1000, gid: 1000, pid: 4242),
        spec: .criu(.init(imagesDirectory: "/srv/images", workDirectory: "/srv/work",
                          pageServer: .init(address: "10.0.0.2", port: 27000))),
        socket: "/srv/work/lazy-pages.socket", state: .running, counters: ["faults": 12, "pagesExpected": 900],
        elapsedSeconds: 1.5, restarts: 1, lastAdoptedAt: 1_796_000_000)

    @Test func aRecordReadsBackFromItsMemoryFileAndTheNewestSlotWins() throws {
        let file = try JobRecordFile(jobID: "7")
        var record = Self.record
        try file.write(record)
        #expect(try file.read().get() == record)
        record.counters["faults"] = 13
        try file.write(record)
        record.counters["faults"] = 14
        try file.write(record)
        // Another holder of the same file (the successor) sees the newest one.
        let other = try JobRecordFile(adopting: dup(file.descriptor))
        #expect(try other.read().get().counters["faults"] == 14)
    }

    @Test func aTornWriteLeavesThePreviousRecord() throws {
        let file = try JobRecordFile(jobID: "7")
        var record = Self.record
        try file.write(record)  // slot 1
        record.counters["faults"] = 99
        try file.write(record)  // slot 0
        // The daemon killed in the middle of its next write (into slot 1): half of it garbage.
        let torn = try JobRecordFormat.encode(record, sequence: 3)
        let half = torn.count / 2
        (file.file.base + JobRecordFormat.slotSize).copyMemory(from: Array(torn[..<half]) + [UInt8](repeating: 0xAB, count: 16), byteCount: half + 16)
        #expect(try file.read().get().counters["faults"] == 99)
    }

    @Test func damagedRecordsAreRefusedWithTheReason() throws {
        let bytes = try JobRecordFormat.encode(Self.record, sequence: 1)
        func reason(_ mutate: (inout [UInt8]) -> Void) -> String {
            var copy = bytes
            mutate(&copy)
            switch JobRecordFormat.decode(slot: copy) {
            case .success: return "accepted"
            case .failure(let why): return why.description
            }
        }
        #expect(reason { _ in } == "accepted")
        #expect(reason { $0[0] = UInt8(ascii: "X") } == "not a job record (bad magic)")
        #expect(reason { $0[8] = 2 }.contains("record version 2 is not known"))
        #expect(reason { $0[JobRecordFormat.headerSize + 3] ^= 1 } == "bad checksum")
        #expect(reason { $0[20] = 0xFF; $0[21] = 0xFF; $0[22] = 0xFF } == "bad length 16777215")
        #expect(reason { $0 = [UInt8](repeating: 0, count: $0.count) } == "empty")
        // Both slots bad: the reasons of both.
        let empty = [UInt8](repeating: 0, count: 2 * JobRecordFormat.slotSize)
        guard case .failure(let why) = JobRecordFormat.decode(file: empty) else {
            Issue.record("an empty file was accepted")
            return
        }
        #expect(why.description == "slot 0: empty; slot 1: empty")
    }

    @Test func storedNamesAreParsedAndForeignOnesKeptApart() {
        #expect(JobParking.name(job: "12", kind: "fd.40") == "lpj.12.fd.40")
        #expect(JobParking.parse("lpj.12.fd.40").map { [$0.job, $0.kind] } == ["12", "fd.40"])
        #expect(JobParking.parse("lpj.12.record").map { [$0.job, $0.kind] } == ["12", "record"])
        #expect(JobParking.parse("control") == nil)
        #expect(JobParking.parse("lpj..record") == nil)
        #expect(JobParking.parse("lpj.x1.record") == nil)
        #expect(JobParking.parse("lpj.3.") == nil)
        let stored = StoredJobs([("control", 3), ("lpj.2.record", 4), ("lpj.2.fd.9", 5), ("other", 6)])
        #expect(stored.jobs["2"]?.map(\.kind) == ["record", "fd.9"])
        #expect(stored.foreign.map(\.name) == ["control", "other"])
    }

    @Test func storedDescriptorsGoBackToTheirNumbers() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[1]) }
        // A number well above anything this test process has open.
        let wanted: Int32 = 900
        #expect(fcntl(wanted, F_GETFD) < 0)
        let (placed, unplaced) = StoredJobs.placeAtOriginalNumbers([("lpj.5.fd.\(wanted)", ends[0]), ("lpj.5.record", dup(ends[1]))])
        defer { for entry in placed { close(entry.descriptor) } }
        #expect(unplaced.isEmpty)
        #expect(placed.first?.descriptor == wanted)
        #expect(write(ends[1], "z", 1) == 1)
        var byte: UInt8 = 0
        #expect(read(wanted, &byte, 1) == 1 && byte == UInt8(ascii: "z"))
        // A number this process already uses for something else: that job cannot be placed.
        let (left, clash) = StoredJobs.placeAtOriginalNumbers([("lpj.6.fd.\(ends[1])", dup(ends[1]))])
        #expect(clash == ["6"])
        for entry in left { close(entry.descriptor) }
    }
}
