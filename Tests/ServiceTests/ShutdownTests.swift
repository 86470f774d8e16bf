import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// SIGTERM: no new jobs, running restores finish (bounded), nothing abandoned silently.
@Suite(.serialized) struct ShutdownTests {
    @Test(.timeLimit(.minutes(2))) func runningRestoresFinishAfterSIGTERM() throws {
        let daemon = try ServiceDaemon()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let socket = memory.socket("vm")
        let id = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile])
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"], wait: true)
        try vm.waitForLine(startingWith: "READY")
        try daemon.waitUntil(id, is: .running)
        kill(daemon.process.pid, SIGTERM)
        #expect(try daemon.notification(startingWith: "STOPPING=1\n").contains("STATUS=shutting down: 1 jobs running"))
        // The VM touches its memory only now: the daemon still serves it.
        vm.go()
        #expect(vm.finish() == .exited(0), "\(vm.lines)")
        #expect(daemon.process.wait() == 0, "\(daemon.process.stderr)")
        #expect(daemon.process.stderr.contains("job at shutdown job=\(id) owner=0 reason=- state=completed"),
                "\(daemon.process.stderr)")
    }

    @Test(.timeLimit(.minutes(2))) func jobsLeftAtTheTimeoutAreCancelledAndLogged() throws {
        let daemon = try ServiceDaemon(["--shutdown-timeout", "0.2"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let socket = memory.socket("vm")
        let id = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile])
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"], wait: true)
        try vm.waitForLine(startingWith: "READY")
        try daemon.waitUntil(id, is: .running)
        let listening = try daemon.add(["firecracker", "--socket", memory.socket("idle"), "--mem-file", memory.memoryFile])
        kill(daemon.process.pid, SIGTERM)
        #expect(daemon.process.wait() == 0, "\(daemon.process.stderr)")
        // A VM that would hang on faults nobody serves is killed, not abandoned.
        #expect(vm.finish() == .signalled(SIGKILL))
        let log = daemon.process.stderr
        #expect(log.contains("shutdown timeout: cancelling job job=\(id)"), "\(log)")
        #expect(log.contains("job at shutdown job=\(id) owner=0 reason=the daemon shut down"), "\(log)")
        #expect(log.contains("job at shutdown job=\(listening) owner=0 reason=the daemon shut down"), "\(log)")
    }
}
