import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// `lazy-pagesd serve` started the way systemd starts it from `lazy-pagesd.socket`: the control socket already
/// bound and listening as fd 3, `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, and a notify socket.
@Suite struct ActivationTests {
    @Test(.timeLimit(.minutes(2))) func theServiceUsesTheSocketSystemdHandsOver() throws {
        let directory = try makeTemporaryDirectory("lp-service-activation")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/control.sock"
        // Not close-on-exec: the shell below moves it to fd 3, as systemd would pass it (bash: dash only takes
        // descriptor numbers below 10, and in a busy test process this one may be higher).
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0 && listen(listener, 8) == 0)
        let notify = try NotifyReceiver(path: directory + "/notify")
        let daemon = try DaemonProcess(
            "/bin/bash",
            ["-c", "LISTEN_PID=$$ exec \"$0\" serve --control-socket \"$1\" 3<&\(listener)", try BuiltProducts.path(of: "lazy-pagesd"),
             directory + "/not-used.sock"],
            environment: ["NOTIFY_SOCKET=\(notify.path)", "LISTEN_FDS=1", "LISTEN_FDNAMES=control"], directory: directory)
        close(listener)
        #expect(try notify.receive() == "READY=1\nSTATUS=serving on (socket activation)\n")
        // The socket it was handed serves; the --control-socket path was never bound.
        let reply = try ControlClient(socketPath: path).send(ControlRequest(op: .list))
        #expect(reply.ok && reply.jobs == [])
        #expect(access(directory + "/not-used.sock", F_OK) != 0)
        kill(daemon.pid, SIGTERM)
        #expect(try notify.receive().hasPrefix("STOPPING=1\n"))
        #expect(daemon.wait() == 0, "\(daemon.stderr)")
    }
}
