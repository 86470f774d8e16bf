import Foundation
import LazyPagesEngine
import LazyPagesFirecracker
import LinuxSupport
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A monitor restart the VM never notices (issue 15), for Firecracker: `lazy-pagesd firecracker` is SIGKILLed in the
/// middle of a restore — while the guest faults, and while the background fill runs — and its guardian starts a
/// successor (`lazy-pagesd adopt`) that rebuilds the guest memory from the journal (the handshake's regions and
/// every balloon removal) and serves on. fc-emulator checks every guest byte against the memory file (ballooned
/// ranges: zeros) and must exit 0. A journal that cannot vouch — or `--no-handover` — has the guardian kill the VM:
/// never a run on wrong memory.
@Suite(.serialized) struct FirecrackerHandoverTests {
    /// `lazy-pagesd firecracker` on `fixture`, listening once this returns (READY=1 came).
    static func startDaemon(_ fixture: SnapshotFixture, _ arguments: [String], environment: [String] = [])
        throws -> DaemonProcess
    {
        let notify = try NotifyReceiver(path: fixture.directory + "/notify")
        let daemon = try DaemonProcess(
            try BuiltProducts.path(of: "lazy-pagesd"),
            ["firecracker", "--socket", fixture.socket, "--mem-file", fixture.memoryFile, "-v"] + arguments,
            environment: environment + ["NOTIFY_SOCKET=\(notify.path)"], directory: fixture.directory)
        let ready = try notify.receive()
        try #require(ready.hasPrefix("READY=1"), "\(ready) \(daemon.stderr)")
        return daemon
    }

    /// The successor's pid (from its log line), once it logged that it continues the restore; nil if none did.
    static func successor(of daemon: DaemonProcess) -> pid_t? { successors(of: daemon).first }

    /// Every successor's pid, in order.
    static func successors(of daemon: DaemonProcess) -> [pid_t] {
        daemon.stderr.split(separator: "\n").filter { $0.contains("continuing the restore of a daemon that died") }
            .compactMap { line in line.range(of: " pid=").flatMap { pid_t(line[$0.upperBound...].prefix { $0.isNumber }) } }
    }

    /// Waits (bounded, a safety net) until `pid` is gone — exited, or a zombie nobody reaped yet.
    static func waitUntilGone(_ pid: pid_t) {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  !stat.contains(") Z ") else { return }
            usleep(2000)
        }
    }

    /// Waits until every guardian the daemons logged (the first daemon's, a successor's) is gone: a guardian that
    /// kills the VM says so only once the VM is dead.
    static func waitForGuardians(_ daemon: DaemonProcess) {
        var text = Substring(daemon.stderr)
        while let range = text.range(of: "guardian started pid=") {
            text = text[range.upperBound...]
            if let pid = pid_t(text.prefix { $0.isNumber }) { waitUntilGone(pid) }
        }
    }

    /// Stops `pid` (SIGSTOP) at a moment its journal's reading marker is clear — not between reading uffd messages
    /// and recording them, where a kill leaves a journal that cannot vouch (`aJournalThatCannotVouchHasTheVMKilled`)
    /// — and returns true; the marker is read from the journal's memory file through `/proc/PID/fd`.
    static func stopOutsideAReading(_ pid: pid_t) -> Bool {
        guard let journal = journalDescriptorPath(pid) else { return false }
        let fd = open(journal, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        for _ in 0..<10_000 {
            kill(pid, SIGSTOP)
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline,
                  let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  !stat.contains(") T ") { usleep(100) }
            var reading: UInt64 = 1
            guard pread(fd, &reading, 8, 16) == 8 else { return false }  // LP_JOURNAL_READING_OFFSET
            if reading == 0 { return true }
            kill(pid, SIGCONT)
        }
        return false
    }

    /// `/proc/PID/fd/N` of the daemon's restore journal (a memfd named lazy-pages-journal).
    static func journalDescriptorPath(_ pid: pid_t) -> String? {
        let directory = "/proc/\(pid)/fd"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + name
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path),
               target.contains("memfd:lazy-pages-journal") { return path }
        }
        return nil
    }

    /// Resident pages of `pid` (`/proc/PID/statm`, second field).
    static func residentPages(_ pid: pid_t) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8)) ?? ""
        return text.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    }

    /// What a transparent hand-over leaves: the first daemon killed, the successor's summary (exit 0 path), the VM's
    /// every byte right.
    static func expectContinued(_ daemon: DaemonProcess, status: Int32, emulator: Emulator, ending: Emulator.Ending,
                                okLine: String, context: String) {
        for pid in successors(of: daemon) { waitUntilGone(pid) }
        waitForGuardians(daemon)
        let all = "\(context)\n\(emulator.lines)\n\(daemon.stderr.suffix(6000))\n\(daemon.stdout)"
        #expect(status == -SIGKILL, "\(all)")
        #expect(successor(of: daemon) != nil, "no successor continued the restore: \(all)")
        #expect(daemon.stderr.contains("first page served after the hand-over"), "the successor served nothing: \(all)")
        #expect(ending == .exited(0), "\(all)")
        #expect(emulator.lines.contains(okLine), "\(all)")
        #expect(!emulator.lines.contains { $0.hasPrefix("FAIL") }, "\(all)")
        // The successor's restore completed (its summary is printed only then) and nothing was refused.
        #expect(daemon.stdout.hasPrefix("lazy-pages: 1 tasks"), "\(all)")
        #expect(!daemon.stderr.contains("restore failed"), "\(all)")
        #expect(!daemon.stderr.contains("refused the restore"), "\(all)")
        #expect(!daemon.stderr.contains("lp-guardian: lazy-pagesd"), "the guardian killed something: \(all)")
    }

    /// Killed while the guest faults (serving faults only): the balloon's removal came before the kill, in the
    /// middle of the last region, which the guest reads only after it; the successor must replay it from the
    /// journal and serve zeros there (dump data there is a FAIL line).
    @Test(.timeLimit(.minutes(20))) func killedDuringFaultsTheSuccessorFinishesTheRestore() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 32 << 20)
        let daemon = try Self.startDaemon(fixture, ["--fault-around", "1"])
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:16M", "4k:16M"],
            balloons: ["1:8M:64K"], threads: 2, progress: 1024)
        // The guest has read (faulted) 1024 of its 8192 pages: the balloon is behind it, most pages ahead. Its
        // threads go on faulting while the daemon is stopped and killed.
        try emulator.waitForLine(startingWith: "PROGRESS")
        #expect(Self.stopOutsideAReading(daemon.pid), "the daemon's journal marker never cleared")
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        let ending = emulator.finish()
        Self.expectContinued(daemon, status: status, emulator: emulator, ending: ending,
                             okLine: "OK regions=2 bytes=33554432 zero_bytes=65536 threads=2", context: "faults")
        // The ballooned range (16 pages) was answered with zeros by the successor: it knew of the removal.
        #expect(daemon.stdout.contains(" 16 zero-filled"), "\(daemon.stdout)")
    }}

    /// Killed, and its successor killed too while it serves the guest: a second successor finishes the restore.
    @Test(.timeLimit(.minutes(20))) func aSuccessorKilledInTurnIsContinuedByAnother() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 32 << 20)
        let daemon = try Self.startDaemon(fixture, ["--fault-around", "1"])
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:16M", "4k:16M"],
            balloons: ["1:8M:64K"], threads: 2, progress: 1024)
        try emulator.waitForLine(startingWith: "PROGRESS pieces=1024")
        #expect(Self.stopOutsideAReading(daemon.pid), "the daemon's journal marker never cleared")
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        // The successor serves: the guest gets on by another 1024 pages.
        try emulator.waitForLine(startingWith: "PROGRESS pieces=3072")
        let first = try #require(Self.successor(of: daemon), "\(daemon.stderr.suffix(4000))")
        #expect(Self.stopOutsideAReading(first), "the successor's journal marker never cleared")
        kill(first, SIGKILL)
        let ending = emulator.finish()
        Self.expectContinued(daemon, status: status, emulator: emulator, ending: ending,
                             okLine: "OK regions=2 bytes=33554432 zero_bytes=65536 threads=2", context: "twice")
        #expect(Self.successors(of: daemon).count == 2, "\(daemon.stderr.suffix(4000))")
        #expect(daemon.stderr.contains("handovers=2"), "\(daemon.stderr.suffix(4000))")
    }}

    /// Killed before the VM connected: the successor takes the listener over and serves the VM from its handshake.
    @Test(.timeLimit(.minutes(20))) func killedBeforeTheVMConnectedTheSuccessorServesIt() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 4 << 20)
        let daemon = try Self.startDaemon(fixture, [])
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        // The VM may connect at once: the listener stays open (the guardian holds it) and queues the connection.
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:2M", "4k:2M"],
            balloons: ["0:1M:16K"], threads: 2)
        let ending = emulator.finish()
        if let pid = Self.successor(of: daemon) { Self.waitUntilGone(pid) }
        Self.waitForGuardians(daemon)
        let all = "\(emulator.lines)\n\(daemon.stderr.suffix(6000))\n\(daemon.stdout)"
        #expect(status == -SIGKILL, "\(all)")
        #expect(ending == .exited(0), "\(all)")
        #expect(emulator.lines.contains("OK regions=2 bytes=4194304 zero_bytes=16384 threads=2"), "\(all)")
        #expect(daemon.stderr.contains("Firecracker restore taken over listener="), "\(all)")
        #expect(daemon.stdout.hasPrefix("lazy-pages: 1 tasks"), "\(all)")
        #expect(access(fixture.socket, F_OK) != 0, "the socket file is left behind")
    }}

    /// A successor refuses a memory file that is not the one the restore began with (same path, another file), and
    /// a journal whose guest region is recorded in part.
    @Test func aReplacedMemoryFileOrAHalfRecordedRegionIsRefused() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let memory = try MappedFile(path: fixture.memoryFile)
        let identity = (kind: FirecrackerJournalEntry.memoryFile.rawValue, a: Int64(memory.size),
                        b: Int64(bitPattern: memory.inode))
        let region: [(kind: UInt32, a: Int64, b: Int64)] = [
            (FirecrackerJournalEntry.regionAddress.rawValue, 0x7f00_0000_0000, 1 << 20),
            (FirecrackerJournalEntry.regionFile.rawValue, 0, 4096),
        ]
        let space = try FirecrackerSession.addressSpace(journaled: [identity] + region, memory: memory)
        #expect(space.pendingPages == 256)
        #expect(throws: RestoreJournal.AdoptionRefusal.self) {
            try FirecrackerSession.addressSpace(journaled: [identity] + region.prefix(1), memory: memory)
        }
        // Another file at the same path: refused (its inode differs), never served from.
        let copy = fixture.directory + "/copy"
        #expect(rename(fixture.memoryFile, copy) == 0)
        #expect(FileManager.default.createFile(atPath: fixture.memoryFile, contents: Data(count: 1 << 20)))
        let other = try MappedFile(path: fixture.memoryFile)
        #expect {
            try FirecrackerSession.addressSpace(journaled: [identity] + region, memory: other)
        } throws: { error in
            guard case .source(let why)? = error as? RestoreJournal.AdoptionRefusal else { return false }
            return why.contains("is not the memory file the restore began with")
        }
    }

    /// Killed at random moments while the guest faults (every other round beside the background fill): each kill is continued transparently (every byte right,
    /// exit 0) or — killed between reading uffd messages and recording them, a window a fault storm hits now and
    /// then — falls back to the guardian killing the VM, saying why. Never a wrong byte.
    @Test(.timeLimit(.minutes(10))) func killedAtRandomMomentsOfFaultsNoByteIsEverWrong() async throws { try await oneHeavyTestAtATime {
        let rounds = Int(ProcessInfo.processInfo.environment["LP_FC_HANDOVER_KILLS"] ?? "") ?? 6
        var transparent = 0, afterTheEnd = 0, fallbacks: [String] = [], pauses: [Double] = []
        for round in 0..<rounds {
            let fixture = try SnapshotFixture(bytes: 16 << 20)
            // Every other round with the background fill running beside the guest's faults.
            let fill = round % 2 == 1
            let daemon = try Self.startDaemon(
                fixture, ["--fault-around", "\(1 + round % 3)"] + (fill ? ["--background-fill"] : []))
            let emulator = try Emulator(
                socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:8M", "4k:8M"],
                balloons: ["1:4M:32K"], threads: 2, progress: 256)
            let at = 256 * (1 + round % 5)
            try emulator.waitForLine(startingWith: "PROGRESS pieces=\(at)")
            kill(daemon.pid, SIGKILL)
            let status = daemon.wait()
            let ending = emulator.finish()
            if let pid = Self.successor(of: daemon) { Self.waitUntilGone(pid) }
            Self.waitForGuardians(daemon)
            let all = "round \(round) at \(at) fill=\(fill)\n\(emulator.lines.suffix(20))\n\(daemon.stderr.suffix(4000))\n\(daemon.stdout)"
            #expect(status == -SIGKILL, "\(all)")
            #expect(!emulator.lines.contains { $0.hasPrefix("FAIL") }, "a wrong byte: \(all)")
            if ending == .exited(0) {
                #expect(emulator.lines.contains("OK regions=2 bytes=16777216 zero_bytes=32768 threads=2"), "\(all)")
                #expect(Self.successor(of: daemon) != nil, "\(all)")
                // A kill after the guest had read everything and exited (a fast round beside the fill): the dead
                // daemon saw the VM exit, the successor has no process left to serve.
                let log = daemon.stderr
                if let exited = log.range(of: "the VM process exited"), let adopted = log.range(of: "restore adopted"),
                   exited.lowerBound < adopted.lowerBound
                {
                    afterTheEnd += 1
                    continue
                }
                // Not checked here: the successor's summary line on stdout (2 rounds in 1 000 ended without it, the
                // VM right, RELIABILITY.md's open findings).
                transparent += 1
                // The pause the VM saw: from the death (as the guardian saw it) to the successor's first page.
                if let range = daemon.stderr.range(of: "pauseMilliseconds=") {
                    pauses += Double(daemon.stderr[range.upperBound...].prefix { $0.isNumber || $0 == "." }).map { [$0] } ?? []
                }
            } else {
                #expect(ending == .signalled(SIGKILL), "\(all)")
                #expect(daemon.stderr.contains("lp-guardian: lazy-pagesd"), "not killed by the guardian: \(all)")
                let marker = "lp-guardian: no hand-over: "
                let reason = daemon.stderr.range(of: marker).map { String(daemon.stderr[$0.upperBound...].prefix { $0 != "\n" }) }
                #expect(reason == "reading-events", "a fallback for another reason: \(all)")
                fallbacks.append(reason ?? "?")
            }
        }
        let sorted = pauses.sorted()
        let median = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        print("Firecracker hand-over: \(rounds) kills during faults, \(transparent) continued, \(afterTheEnd) after the VM "
              + "had exited, \(fallbacks.count) fell back \(fallbacks), 0 wrong bytes; pause median \(Int(median)) ms, max "
              + "\(Int(sorted.last ?? 0)) ms")
        #expect(transparent * 2 >= rounds, "only \(transparent) of \(rounds) kills were continued: \(fallbacks)")
    }}

    /// Killed while the background fill copies the guest memory in (the guest not running yet): the successor fills
    /// the rest (`EEXIST` where a page is home already), then serves the guest and its balloon.
    @Test(.timeLimit(.minutes(20))) func killedDuringTheBackgroundFillTheSuccessorFinishesTheRestore() async throws { try await oneHeavyTestAtATime {
        let bytes = 256 << 20
        let fixture = try SnapshotFixture(bytes: bytes)
        let daemon = try Self.startDaemon(fixture, ["--background-fill"])
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:128M", "4k:128M"],
            balloons: ["0:64M:128K"], threads: 2, wait: true)
        try emulator.waitForLine(startingWith: "READY")
        // The fill is under way once the guest's resident memory grew by 8 MiB (polled; the limit is a safety net).
        let baseline = Self.residentPages(emulator.pid)
        let deadline = ContinuousClock.now + .seconds(60)
        while Self.residentPages(emulator.pid) < baseline + 2048 && ContinuousClock.now < deadline { usleep(100) }
        kill(daemon.pid, SIGKILL)
        let residentAtKill = Self.residentPages(emulator.pid) - baseline
        let status = daemon.wait()
        emulator.go()
        let ending = emulator.finish()
        let context = "fill: \(residentAtKill) pages home at the kill"
        #expect(residentAtKill >= 2048 && residentAtKill < bytes / 4096, "not killed in the middle of the fill: \(context)")
        Self.expectContinued(daemon, status: status, emulator: emulator, ending: ending,
                             okLine: "OK regions=2 bytes=268435456 zero_bytes=131072 threads=2", context: context)
        #expect(daemon.stdout.contains(" in background"), "\(daemon.stdout)")
    }}

    /// Fault injection: the daemon stops between reading the balloon's removal and recording it, and is killed
    /// there. The removal is in the journal's read area: the successor records it, serves zeros in the removed range
    /// (dump data there is a FAIL line) and finishes the restore (before the read area, the VM was killed here).
    @Test(.timeLimit(.minutes(20))) func killedBetweenReadingARemovalAndRecordingItIsContinued() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 4 << 20)
        let daemon = try Self.startDaemon(fixture, [], environment: ["LP_FAULT_STOP_BEFORE_RECORDING_EVENT=1"])
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:2M", "4k:2M"],
            balloons: ["1:1M:64K"], threads: 2)
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline,
              let stat = try? String(contentsOfFile: "/proc/\(daemon.pid)/stat", encoding: .utf8),
              !stat.contains(") T ") { usleep(500) }
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        let ending = emulator.finish()
        Self.expectContinued(daemon, status: status, emulator: emulator, ending: ending,
                             okLine: "OK regions=2 bytes=4194304 zero_bytes=65536 threads=2", context: "read area")
        #expect(daemon.stderr.contains("the predecessor died in a read of events: recorded what it had not"),
                "\(daemon.stderr.suffix(6000))")
        #expect(daemon.stderr.contains("eventsRecorded=1"), "\(daemon.stderr.suffix(6000))")
    }}

    /// `--no-handover`: a daemon killed mid-restore has its VM killed by the guardian, as before hand-over.
    @Test(.timeLimit(.minutes(20))) func noHandoverKillsTheVM() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 32 << 20)
        let daemon = try Self.startDaemon(fixture, ["--fault-around", "1", "--no-handover"])
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:32M"], threads: 2, progress: 1024)
        try emulator.waitForLine(startingWith: "PROGRESS")
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        let ending = emulator.finish()
        Self.waitForGuardians(daemon)
        let all = "\(emulator.lines)\n\(daemon.stderr.suffix(6000))"
        #expect(status == -SIGKILL, "\(all)")
        #expect(ending == .signalled(SIGKILL), "the VM was not killed: \(all)")
        #expect(Self.successor(of: daemon) == nil, "\(all)")
        #expect(daemon.stderr.contains("lp-guardian: lazy-pagesd"), "not killed by the guardian: \(all)")
    }}
}
