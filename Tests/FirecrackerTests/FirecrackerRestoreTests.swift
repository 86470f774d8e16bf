import TestSupport
import Foundation
import LazyPagesEngine
import LazyPagesFirecracker
import Testing

/// Firecracker's UFFD backend for real: fc-emulator creates the uffd, maps and registers guest memory, sends the
/// one handshake and reads every byte as the guest; the session serves it from the memory file.
@Suite(.serialized) struct FirecrackerRestoreTests {
    @Test(.timeLimit(.minutes(2))) func fourKiBRestoreDeliversEveryByteAndBalloonReadsZeros() throws {
        let fixture = try SnapshotFixture(bytes: 6 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M", "4k:3M", "4k:512K"],
            balloons: ["1:64K:128K", "2:0:8K"], threads: 2)
        let ending = emulator.finish()
        #expect(ending == .exited(0), "\(emulator.lines)")
        #expect(emulator.lines.contains("OK regions=3 bytes=4718592 zero_bytes=139264 threads=2"), "\(emulator.lines)")
        #expect(outcome() == .completed)
        let stats = session.statistics
        #expect(stats[.removes] == 2)
        #expect(stats[.pagesZeroed] == 34)
        #expect(stats[.pagesExpected] == 1152)
        // Every page was either copied or carved out by the balloon (some copied then removed).
        #expect(stats.pagesCopied + 34 >= 1152)
        #expect(session.mappings.count == 3)
        #expect(session.killedPeer == false)
    }

    @Test(.timeLimit(.minutes(2)),
          .enabled(if: HugePageReservation.available, "the kernel gives no 2 MiB huge pages (nr_hugepages stays put)"))
    func twoMiBHugetlbRestoreDeliversEveryByteAndBalloonReadsZeros() throws {
        let reservation = try HugePageReservation(8)
        defer { withExtendedLifetime(reservation) {} }
        let fixture = try SnapshotFixture(bytes: 8 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["2m:4M", "2m:2M"],
            balloons: ["0:2M:2M"], threads: 2)
        let ending = emulator.finish()
        #expect(ending == .exited(0), "\(emulator.lines)")
        #expect(emulator.lines.contains("OK regions=2 bytes=6291456 zero_bytes=2097152 threads=2"), "\(emulator.lines)")
        #expect(outcome() == .completed)
        let stats = session.statistics
        #expect(session.mappings.allSatisfy { $0.pageSize == 2 << 20 })
        #expect(stats[.removes] == 1)
        // One 2 MiB page of zeros (counted in 4 KiB pages); copies are whole huge pages.
        #expect(stats[.pagesZeroed] == 512)
        #expect(stats.pagesCopied % 512 == 0 && stats.pagesCopied >= 1024)
    }

    @Test(.timeLimit(.minutes(2))) func backgroundFillBringsEveryPageHomeBeforeTheGuestRuns() throws {
        let fixture = try SnapshotFixture(bytes: 2 << 20)
        let session = try fixture.session(backgroundFill: true)
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M", "4k:1M"],
            balloons: ["0:0:16K"], wait: true)
        try emulator.waitForLine(startingWith: "READY")
        // Every page comes home while the guest has not touched anything yet (polled; the limit is a safety net).
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while session.statistics[.pagesCopiedInBackground] < 512 && monotonicNanoseconds() < deadline {
            usleep(1000)
        }
        #expect(session.statistics[.pagesCopiedInBackground] == 512)
        #expect(session.statistics[.pagesCopiedOnFault] == 0)
        // The VM still holds its uffd: the balloon's removed pages must still be answered, with zeros.
        emulator.go()
        #expect(emulator.finish() == .exited(0), "\(emulator.lines)")
        #expect(emulator.lines.contains { $0.hasPrefix("OK regions=2") }, "\(emulator.lines)")
        #expect(outcome() == .completed)
        #expect(session.statistics[.pagesZeroed] == 4)
        #expect(session.statistics[.pagesCopiedOnFault] == 0)
    }

    @Test(.timeLimit(.minutes(2))) func theRestoreEndsWhenTheVMExits() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M"], wait: true)
        try emulator.waitForLine(startingWith: "READY")
        kill(emulator.pid, SIGTERM)
        #expect(emulator.finish() == .signalled(SIGTERM))
        #expect(outcome() == .completed)
        #expect(session.statistics[.processesExited] == 1)
        #expect(session.killedPeer == false)
    }

    @Test(.timeLimit(.minutes(2))) func aFatalErrorKillsTheVMInsteadOfLeavingItHung() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M"], wait: true)
        try emulator.waitForLine(startingWith: "READY")
        // The snapshot file loses its bytes under the mapping: every copy from it now fails (EFAULT).
        #expect(truncate(fixture.memoryFile, 0) == 0)
        emulator.go()
        #expect(emulator.finish() == .signalled(SIGKILL), "\(emulator.lines)")
        guard case .failed(let reason) = outcome() else {
            Issue.record("the restore did not fail")
            return
        }
        #expect(reason.contains("copying"), "\(reason)")
        #expect(session.killedPeer)
    }
}
