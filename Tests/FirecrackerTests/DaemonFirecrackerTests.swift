import Foundation
import TestSupport
import Testing

/// `lazy-pagesd firecracker` as a process: it tells a Type=notify supervisor when it listens, serves the emulator,
/// and exits 0 when the VM exits; a refused handshake ends it with status 1 and the reason on stderr.
@Suite(.serialized) struct DaemonFirecrackerTests {
    @Test(.timeLimit(.minutes(2))) func theDaemonServesARestoreAndReportsToSystemd() throws {
        let fixture = try SnapshotFixture(bytes: 2 << 20)
        let notify = try NotifyReceiver(path: fixture.directory + "/notify")
        let daemon = try DaemonProcess(
            try BuiltProducts.path(of: "lazy-pagesd"),
            ["firecracker", "--socket", fixture.socket, "--mem-file", fixture.memoryFile],
            environment: ["NOTIFY_SOCKET=\(notify.path)"], directory: fixture.directory)
        // READY=1 is sent once the socket listens: the emulator may connect right away.
        #expect(try notify.receive() == "READY=1\nSTATUS=waiting for Firecracker on \(fixture.socket)\n")
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M", "4k:512K"],
            balloons: ["0:4K:8K"], threads: 2)
        #expect(emulator.finish() == .exited(0), "\(emulator.lines)")
        #expect(daemon.wait() == 0, "\(daemon.stderr)")
        #expect(try notify.receive() == "STOPPING=1\nSTATUS=completed\n")
        #expect(daemon.stdout.hasPrefix("lazy-pages: 1 tasks"), "\(daemon.stdout)")
        #expect(daemon.stdout.contains(" 2 zero-filled"), "\(daemon.stdout)")
    }

    @Test(.timeLimit(.minutes(2))) func aRefusedHandshakeEndsTheDaemonWithTheReason() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let notify = try NotifyReceiver(path: fixture.directory + "/notify")
        let daemon = try DaemonProcess(
            try BuiltProducts.path(of: "lazy-pagesd"),
            ["firecracker", "--socket", fixture.socket, "--mem-file", fixture.memoryFile],
            environment: ["NOTIFY_SOCKET=\(notify.path)"], directory: fixture.directory)
        _ = try notify.receive()
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:1M"], handshake: "outside")
        #expect(emulator.finish() == .signalled(SIGKILL))
        #expect(daemon.wait() == 1)
        #expect(daemon.stderr.contains("lazy-pagesd: restore failed: Firecracker handshake refused (region outside the memory file)"),
                "\(daemon.stderr)")
        #expect(daemon.stderr.contains("(killed the VM, pid \(emulator.pid))"), "\(daemon.stderr)")
    }

    @Test(.timeLimit(.minutes(1))) func aMissingMemoryFileIsAStartError() throws {
        let fixture = try SnapshotFixture(bytes: 4096)
        let daemon = try DaemonProcess(
            try BuiltProducts.path(of: "lazy-pagesd"),
            ["firecracker", "--socket", fixture.socket, "--mem-file", fixture.directory + "/nope"],
            environment: [], directory: fixture.directory)
        #expect(daemon.wait() == 1)
        #expect(daemon.stderr.contains("open \(fixture.directory)/nope"), "\(daemon.stderr)")
        #expect(access(fixture.socket, F_OK) != 0, "no socket is left behind")
    }
}
