import Foundation
import LinuxSupport

/// `lazy-pagesd ARGS` started with extra environment variables, stdout and stderr going to files in `directory`.
public final class DaemonProcess {
    public let pid: pid_t
    public let stdoutPath: String
    public let stderrPath: String
    private var reaped = false

    public init(_ executable: String, _ arguments: [String], environment: [String], directory: String) throws {
        stdoutPath = directory + "/daemon.out"
        stderrPath = directory + "/daemon.err"
        let child = try spawnChild(
            executable, arguments, descriptors: [(0, .null), (1, .file(stdoutPath)), (2, .file(stderrPath))],
            environment: environment, removing: ["NOTIFY_SOCKET"])
        pid = child
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            _ = wait()
        }
    }

    /// Waits for the daemon to exit; its exit code, or minus the signal.
    public func wait() -> Int32 {
        let raw = waitpidRetrying(pid) ?? 0
        reaped = true
        return WaitStatus(raw).code
    }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}

/// A datagram socket bound at `path`, standing in for systemd's notify socket.
public final class NotifyReceiver {
    public let descriptor: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw Emulator.Failure(description: "bind \(path): errno \(errno)") }
    }

    deinit { close(descriptor) }

    /// The next notification (at most 60 s, a safety net).
    public func receive() throws -> String {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 60_000) == 1 else { throw Emulator.Failure(description: "no notification") }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        return String(decoding: buffer[..<max(n, 0)], as: UTF8.self)
    }
}
