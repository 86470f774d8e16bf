import Foundation
import LinuxSupport
import TestSupport
import Testing

/// A real process started the way systemd starts a socket-activated `Type=notify` service: a pre-bound listening
/// socket as fd 3, `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, and `NOTIFY_SOCKET` naming a datagram socket the test
/// reads. `LISTEN_PID` is the service's own pid: a shell sets it to `$$` and `exec`s the service, as systemd sets it
/// between fork and exec.
@Suite(.serialized) struct ActivatedServiceTests {
    /// With a path notify socket and a named descriptor; with an abstract one and no `LISTEN_FDNAMES`.
    @Test(.timeLimit(.minutes(1)), arguments: [false, true])
    func theServiceTakesItsSocketAndReportsReadyThenStopping(abstractNotify: Bool) throws {
        let name = abstractNotify ? "unknown" : "control"
        let directory = try TemporaryDirectory()
        let notify = abstractNotify
            ? try NotifySocket(abstractName: "lazy-pages-activation-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            : try NotifySocket(path: directory.path + "/notify")
        let listenPath = directory.path + "/control.sock"
        let listener = try listeningSocket(at: listenPath)
        defer { close(listener) }
        let testee = try BuiltProducts.path(of: "sd-activation-testee")
        let service = try Service(
            shell: "LISTEN_PID=$$ exec \"$0\"", argument: testee, listener: listener,
            environment: ["LISTEN_FDS=1", "NOTIFY_SOCKET=\(notify.address)"]
                + (abstractNotify ? [] : ["LISTEN_FDNAMES=control"]))
        #expect(try notify.receive() == "STATUS=listening on 1 socket(s)\n")
        #expect(try notify.receive() == "READY=1\n")
        // The service accepts on the socket we bound: a client connects by path as it would to /run/lazy-pagesd.
        let reply = try connectAndRead(listenPath)
        #expect(reply == "hello \(name) fds=1 cloexec=1\n")
        #expect(try notify.receive() == "STOPPING=1\nSTATUS=done\n")
        #expect(service.wait() == 0)
    }

    @Test(.timeLimit(.minutes(1))) func variablesMeantForAnotherPidAreIgnored() throws {
        let directory = try TemporaryDirectory()
        let listener = try listeningSocket(at: directory.path + "/control.sock")
        defer { close(listener) }
        let testee = try BuiltProducts.path(of: "sd-activation-testee")
        // LISTEN_PID names the shell's parent (this test), not the service.
        let service = try Service(
            shell: "LISTEN_PID=$PPID exec \"$0\"", argument: testee, listener: listener,
            environment: ["LISTEN_FDS=1"])
        #expect(service.wait() == 3)
        #expect(service.output == "no activated sockets\n")
    }
}

/// A process spawned through `/bin/sh -c SCRIPT ARGUMENT` with `listener` as fd 3, `/dev/null` as stdin, stdout on
/// a pipe and `environment` added to ours.
final class Service {
    let pid: pid_t
    private var stdoutRead: Int32
    private(set) var output = ""

    init(shell script: String, argument: String, listener: Int32, environment: [String]) throws {
        var pipeEnds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pipeEnds) == 0 else {
            throw TestFailure("socketpair: errno \(errno)")
        }
        let spawned = Result {
            try spawnChild(
                "/bin/sh", ["-c", script, argument],
                descriptors: [(0, .null), (1, .duplicate(pipeEnds[1])), (3, .duplicate(listener))],
                environment: environment, removing: ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"])
        }
        close(pipeEnds[1])
        guard case .success(let child) = spawned else {
            close(pipeEnds[0])
            throw TestFailure("\(spawned)")
        }
        pid = child
        stdoutRead = pipeEnds[0]
    }

    deinit {
        if stdoutRead >= 0 { close(stdoutRead) }
    }

    /// Reads stdout to its end, then reaps the process; its exit code, or -signal.
    func wait() -> Int32 {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { raw in
                retryingOnInterrupt { read(stdoutRead, raw.baseAddress, raw.count) }
            }
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        output = String(decoding: bytes, as: UTF8.self)
        return WaitStatus(waitpidRetrying(pid) ?? 0).code
    }
}
