import Foundation
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn: stdout and stderr go to files, and optionally our pipe's write end is
/// its fd 3 (for `lazy-pagesd --status-fd 3`).
public final class ChildProcess {
    public let pid: pid_t
    public let stdoutPath: String
    public let stderrPath: String
    public private(set) var status: Int32?
    /// Our read end of the fd-3 pipe, if any.
    public let statusPipe: Int32

    public init(
        _ path: String, _ arguments: [String], directory: String, name: String, statusFD: Bool = false,
        environment: [String] = []
    ) throws {
        stdoutPath = "\(directory)/\(name).out"
        stderrPath = "\(directory)/\(name).err"
        var pipeFDs: [Int32] = [-1, -1]
        if statusFD {
            guard pipe(&pipeFDs) == 0 else { throw SpawnError(description: "pipe: \(errno)") }
            for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        var descriptors: [(Int32, ChildDescriptor)] = [(0, .null), (1, .file(stdoutPath)), (2, .file(stderrPath))]
        if statusFD { descriptors.append((3, .duplicate(pipeFDs[1]))) }
        let spawned = Result { try spawnChild(path, arguments, descriptors: descriptors, environment: environment) }
        if statusFD { close(pipeFDs[1]) }
        guard case .success(let child) = spawned else {
            if statusFD { close(pipeFDs[0]) }
            throw SpawnError(description: "cannot start \(path): \(spawned)")
        }
        pid = child
        statusPipe = statusFD ? pipeFDs[0] : -1
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            _ = wait()
        }
        if statusPipe >= 0 { close(statusPipe) }
    }

    /// Waits for the one byte `--status-fd` writes once the daemon listens (false: it exited first, or timeout).
    public func waitUntilReady(timeoutMilliseconds: Int32 = 30_000) -> Bool {
        var entry = pollfd(fd: statusPipe, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, timeoutMilliseconds) == 1 else { return false }
        var byte: UInt8 = 0
        return read(statusPipe, &byte, 1) == 1
    }

    /// Waits for the exit; returns the exit code, or minus the signal.
    @discardableResult
    public func wait() -> Int32 {
        if let status { return status }
        let value = WaitStatus.wait(for: pid)?.code ?? Int32.min
        status = value
        return value
    }

    public var stdoutText: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderrText: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}
