import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built executables (`lazy-pagesd`, `lazy-pages`, `lp-workload`, `lp-guardian`) next to the test bundle.
enum BuiltTools {
    static var directory: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = String(decoding: buffer[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)])
    }
    static func path(_ name: String) -> String { directory + "/" + name }
}

/// A child process started with posix_spawn: stdout and stderr go to files, and optionally our pipe's write end is
/// its fd 3 (for `lazy-pagesd --status-fd 3`).
final class ChildProcess {
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    private(set) var status: Int32?
    /// Our read end of the fd-3 pipe, if any.
    let statusPipe: Int32

    init(
        _ path: String, _ arguments: [String], directory: String, name: String, statusFD: Bool = false,
        environment: [String] = []
    ) throws {
        stdoutPath = "\(directory)/\(name).out"
        stderrPath = "\(directory)/\(name).err"
        var pipeFDs: [Int32] = [-1, -1]
        if statusFD {
            guard pipe(&pipeFDs) == 0 else { throw LazyPagesTestError("pipe: \(errno)") }
            for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        var descriptors: [(Int32, ChildDescriptor)] = [(0, .null), (1, .file(stdoutPath)), (2, .file(stderrPath))]
        if statusFD { descriptors.append((3, .duplicate(pipeFDs[1]))) }
        let spawned = Result { try spawnChild(path, arguments, descriptors: descriptors, environment: environment) }
        if statusFD { close(pipeFDs[1]) }
        guard case .success(let child) = spawned else {
            if statusFD { close(pipeFDs[0]) }
            throw LazyPagesTestError("cannot start \(path): \(spawned)")
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
    func waitUntilReady(timeoutMilliseconds: Int32 = 30_000) -> Bool {
        var entry = pollfd(fd: statusPipe, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, timeoutMilliseconds) == 1 else { return false }
        var byte: UInt8 = 0
        return read(statusPipe, &byte, 1) == 1
    }

    /// Waits for the exit; returns the exit code, or minus the signal.
    @discardableResult
    func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 {
            if errno != EINTR {
                status = Int32.min
                return Int32.min
            }
        }
        let signal = raw & 0x7F
        let value = signal == 0 ? (raw >> 8) & 0xFF : -signal
        status = value
        return value
    }

    var stdoutText: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderrText: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}
