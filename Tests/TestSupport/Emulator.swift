import Foundation
import LinuxSupport

/// One running `fc-emulator` (see `Sources/fc-emulator/main.c`): Firecracker's handshake, then a guest that checks
/// every byte. stdin and stdout are socket pairs held by the test.
public final class Emulator {
    public let pid: pid_t
    private var input: Int32
    private var output: Int32
    private var buffered: [UInt8] = []
    public private(set) var lines: [String] = []
    private var reaped = false

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// How the emulator ended: its exit code, or the signal that killed it.
    public typealias Ending = WaitStatus

    public init(socket: String, memoryFile: String, regions: [String], handshake: String = "normal",
         balloons: [String] = [], threads: Int = 1, wait: Bool = false, progress: Int? = nil,
         user: (uid: UInt32, gid: UInt32)? = nil) throws
    {
        var arguments = ["--socket", socket, "--mem-file", memoryFile, "--handshake", handshake,
                         "--threads", "\(threads)"]
        for region in regions { arguments += ["--region", region] }
        for balloon in balloons { arguments += ["--balloon", balloon] }
        if wait { arguments.append("--wait") }
        if let progress { arguments += ["--progress", "\(progress)"] }
        var path = try BuiltProducts.path(of: "fc-emulator")
        if let user {
            // As another user (setpriv), e.g. a job's owner or an intruder.
            arguments = ["--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups", path] + arguments
            path = "/usr/bin/setpriv"
        }
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        var stdinPair: [Int32] = [-1, -1]
        var stdoutPair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type, 0, &stdinPair) == 0, socketpair(AF_UNIX, type, 0, &stdoutPair) == 0 else {
            throw Failure(description: "socketpair: errno \(errno)")
        }
        let spawned = Result {
            try spawnChild(path, arguments, descriptors: [(0, .duplicate(stdinPair[1])), (1, .duplicate(stdoutPair[1]))])
        }
        close(stdinPair[1])
        close(stdoutPair[1])
        guard case .success(let child) = spawned else {
            close(stdinPair[0])
            close(stdoutPair[0])
            throw Failure(description: "\(spawned)")
        }
        pid = child
        input = stdinPair[0]
        output = stdoutPair[0]
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            _ = reap()
        }
        if input >= 0 { close(input) }
        if output >= 0 { close(output) }
    }

    /// Reads stdout until a line starting with `prefix` (or end of file / `timeout` seconds, as a safety net).
    @discardableResult
    public func waitForLine(startingWith prefix: String, timeout: Int32 = 60) throws -> String {
        while true {
            if let line = lines.first(where: { $0.hasPrefix(prefix) }) { return line }
            guard readMore(timeout: timeout) else {
                throw Failure(description: "fc-emulator printed no \"\(prefix)\" line; it printed \(lines)")
            }
        }
    }

    /// Lets a `--wait` emulator go on to act as the guest.
    public func go() {
        var byte = UInt8(ascii: "\n")
        _ = write(input, &byte, 1)
    }

    /// Reads everything the emulator prints until it exits (killing it after `timeout` seconds, a safety net),
    /// and returns how it ended.
    public func finish(timeout: Int32 = 120) -> Ending {
        while readMore(timeout: timeout) {}
        return reap()
    }

    /// One read from stdout into `lines`; false at end of file, or when nothing came within `timeout` seconds
    /// (then the emulator is killed).
    private func readMore(timeout: Int32) -> Bool {
        guard output >= 0 else { return false }
        var entry = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
        let ready = retryingOnInterrupt { poll(&entry, 1, timeout * 1000) }
        guard ready > 0 else {
            kill(pid, SIGKILL)
            close(output)
            output = -1
            return false
        }
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(output, raw.baseAddress, raw.count) } }
        guard n > 0 else {
            close(output)
            output = -1
            return false
        }
        buffered += chunk[..<n]
        while let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: buffered[..<newline], as: UTF8.self))
            buffered.removeSubrange(...newline)
        }
        return true
    }

    @discardableResult
    public func reap() -> Ending {
        let status = waitpidRetrying(pid) ?? 0
        reaped = true
        return WaitStatus(status)
    }
}
