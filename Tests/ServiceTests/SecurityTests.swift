import Foundation
import LazyPagesControl
import LinuxSupport
import TestSupport
import Testing

/// Every rule of the control socket, each tried by a client that must be refused.
@Suite(.serialized) struct SecurityTests {
    static let nobody: UInt32 = 65534

    @Test func theControlSocketIsNotWorldWritable() throws {
        let daemon = try ServiceDaemon()
        var status = stat()
        #expect(stat(daemon.controlSocket, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o660)
        // nobody is neither owner nor group: the kernel refuses the connection.
        let refused = try daemon.cli(["list"], as: Self.nobody)
        #expect(refused.exitCode == 1)
        #expect(refused.stderr.contains("Permission denied"), "\(refused.stderr)")
    }

    @Test(.timeLimit(.minutes(2))) func anotherUIDCannotSeeOrCancelRootsJob() throws {
        let daemon = try ServiceDaemon(["--socket-group", "\(Self.nobody)"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let id = try daemon.add(["firecracker", "--socket", memory.socket("vm"), "--mem-file", memory.memoryFile])
        let listed = try daemon.cli(["list", "--json"], as: Self.nobody)
        #expect(listed.exitCode == 0, "\(listed.stderr)")
        #expect(try JSONDecoder().decode(ControlReply.self, from: Data(listed.stdout.utf8)).jobs == [])
        for command in [["cancel", id], ["status", id], ["wait", id]] {
            let refused = try daemon.cli(command, as: Self.nobody)
            #expect(refused.exitCode == 1)
            #expect(refused.stderr.contains("no job \(id) owned by uid \(Self.nobody)"), "\(refused.stderr)")
        }
        #expect(try daemon.request(ControlRequest(op: .status, id: id)).job?.state == .listening)
        // A job nobody adds reads files as nobody: a root-only memory file is refused.
        chmod(memory.directory, 0o711)
        chmod(memory.memoryFile, 0o600)
        let sockets = try makeTemporaryDirectory("lp-service-open")
        defer { try? FileManager.default.removeItem(atPath: sockets) }
        chmod(sockets, 0o1777)
        let unreadable = try daemon.cli(
            ["add", "firecracker", "--socket", sockets + "/vm.sock", "--mem-file", memory.memoryFile], as: Self.nobody)
        #expect(unreadable.exitCode == 1)
        #expect(unreadable.stderr.contains("Permission denied") && unreadable.stderr.contains("start-failed"),
                "\(unreadable.stderr)")
        // Root may manage it all.
        #expect(try daemon.cli(["cancel", id]).exitCode == 0)
    }

    @Test func oversizedMalformedAndUnknownRequestsAreRefusedAndServingGoesOn() throws {
        let daemon = try ServiceDaemon()
        let client = try ControlClient(socketPath: daemon.controlSocket)
        let malformed = try client.sendLine(Array("{not json\n".utf8))
        #expect(malformed.code == .malformed)
        #expect(malformed.error?.contains("not a JSON object") == true)
        let version = try client.sendLine(Array("{\"version\":7,\"op\":\"list\"}\n".utf8))
        #expect(version.code == .unsupportedVersion)
        let op = try client.sendLine(Array("{\"version\":1,\"op\":\"explode\"}\n".utf8))
        #expect(op.code == .malformed)
        let job = try client.sendLine(Array("{\"version\":1,\"op\":\"add\",\"job\":{\"frontEnd\":\"criu\"}}\n".utf8))
        #expect(job.code == .invalidJob)
        #expect(job.error?.contains("imagesDirectory") == true)
        let relative = try client.send(ControlRequest(op: .add, job: JobSpec.criu(.init(imagesDirectory: "images"))))
        #expect(relative.code == .invalidJob)
        // The same connection still serves.
        #expect(try client.send(ControlRequest(op: .list)).ok)

        let big = try ControlClient(socketPath: daemon.controlSocket)
        let tooLarge = try big.sendLine(Array("{\"version\":1,\"op\":\"list\",\"pad\":\"".utf8)
            + [UInt8](repeating: UInt8(ascii: "x"), count: ControlProtocol.maxMessageBytes) + Array("\"}\n".utf8))
        #expect(tooLarge.code == .tooLarge)
        // An oversized line whose newline arrives in the same read as its 64 KiB mark is refused too (fuzzer
        // finding: the blank line first shifts the daemon's 16 KiB reads off the line's start).
        let whole = try ControlClient(socketPath: daemon.controlSocket)
        let wholeLine = try whole.sendLine(Array("   \n{\"version\":1,\"op\":\"list\",\"pad\":\"".utf8)
            + [UInt8](repeating: UInt8(ascii: "x"), count: ControlProtocol.maxMessageBytes + 10) + Array("\"}\n".utf8))
        #expect(wholeLine.code == .tooLarge)
        // Other connections are untouched.
        #expect(try daemon.request(ControlRequest(op: .list)).ok)
        #expect(daemon.process.stderr.contains("request refused"), "refusals are logged")
    }

    /// A client that writes requests and never reads the replies must not hold a connection thread forever: once a
    /// reply has waited `--reply-timeout` for it, the daemon hangs up (the fuzzer's pipelined writes found the
    /// deadlock: our receive buffer full of replies, the daemon blocked writing the next one).
    @Test(.timeLimit(.minutes(1))) func aClientThatNeverReadsItsRepliesIsDisconnected() throws {
        let daemon = try ServiceDaemon(["--reply-timeout", "1"])
        let connection = try ControlProtocolFuzzTests.Connection(path: daemon.controlSocket)
        let fd = connection.fd
        // Requests until the daemon stops taking them (its replies fill our receive buffer, it blocks writing),
        // then until it hangs up. Never a read.
        let line = Array("{\"version\":1,\"op\":\"list\"}\n".utf8)
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var sentLines = 0
        var outcome: Int32 = 0
        while outcome == 0 && sentLines < 1_000_000 {
            let n = line.withUnsafeBytes { raw in
                retryingOnInterrupt { send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
            }
            if n < 0 { outcome = errno } else { sentLines += 1 }
        }
        withExtendedLifetime(connection) {}
        #expect(outcome == EPIPE || outcome == ECONNRESET, "errno \(outcome) after \(sentLines) requests")
        // The daemon lives on and serves others.
        #expect(try daemon.request(ControlRequest(op: .list)).ok)
        #expect(daemon.process.stderr.contains("not reading its replies"), "\(daemon.process.stderr)")
    }

    @Test(.timeLimit(.minutes(2))) func tooManyJobsPerUIDAreRefused() throws {
        let daemon = try ServiceDaemon(["--max-jobs-per-uid", "2"])
        let memory = try MemoryFixture(bytes: 1 << 20)
        let first = try daemon.add(["firecracker", "--socket", memory.socket("a"), "--mem-file", memory.memoryFile])
        _ = try daemon.add(["firecracker", "--socket", memory.socket("b"), "--mem-file", memory.memoryFile])
        let third = try daemon.cli(["add", "firecracker", "--socket", memory.socket("c"), "--mem-file", memory.memoryFile])
        #expect(third.exitCode == 1)
        #expect(third.stderr.contains("too-many-jobs"), "\(third.stderr)")
        // An ended job frees its slot.
        #expect(try daemon.cli(["cancel", first]).exitCode == 0)
        _ = try daemon.add(["firecracker", "--socket", memory.socket("c"), "--mem-file", memory.memoryFile])
    }
}
