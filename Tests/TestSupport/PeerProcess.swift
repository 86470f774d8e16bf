import LinuxSupport
import Foundation

/// A long-running peer a test starts and later waits for — a lazy-pages daemon, a page server — with stdout and
/// stderr in files `<name>.out` and `<name>.err` of a directory, and a way to know it is ready to be used.
public final class PeerProcess {
    /// How the peer says it is ready.
    public enum Readiness {
        /// Started with `--status-fd 3` (added by `PeerProcess`): one byte on descriptor 3, as CRIU and lazy-pagesd do.
        case statusDescriptor
        /// Prints a line starting with this prefix on stdout (which then goes to the test, not to a file).
        case stdoutLine(String)
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public let name: String
    public let pid: pid_t
    public let stdoutPath: String
    public let stderrPath: String
    /// What the peer printed to say it was ready (the status byte as text, or the stdout line).
    public private(set) var readyLine = ""
    private var signal: Int32 = -1  // our end of the status descriptor or the stdout socket
    private var status: Int32?

    /// Starts `executable arguments` and returns once it is ready (at most `timeout` seconds, a safety net).
    public init(
        name: String, executable: String, arguments: [String], directory: String, readiness: Readiness,
        timeout: Int32 = 60, extraDescriptors: [(Int32, ChildDescriptor)] = []
    ) throws {
        self.name = name
        stdoutPath = directory + "/\(name).out"
        stderrPath = directory + "/\(name).err"
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw Failure(description: "socketpair: errno \(errno)")
        }
        var descriptors: [(Int32, ChildDescriptor)] = [(0, .null), (2, .file(stderrPath))]
        var argv = arguments
        switch readiness {
        case .statusDescriptor:
            descriptors += [(1, .file(stdoutPath)), (3, .duplicate(pair[1]))]
            argv += ["--status-fd", "3"]
        case .stdoutLine:
            descriptors.append((1, .duplicate(pair[1])))
        }
        descriptors += extraDescriptors
        let spawned = Result { try spawnChild(executable, argv, descriptors: descriptors, removing: ["NOTIFY_SOCKET"]) }
        close(pair[1])
        guard case .success(let child) = spawned else {
            close(pair[0])
            throw Failure(description: "\(name): \(spawned)")
        }
        pid = child
        signal = pair[0]
        do {
            switch readiness {
            case .statusDescriptor:
                readyLine = try readUntil(timeout: timeout) { !$0.isEmpty }
            case .stdoutLine(let prefix):
                readyLine = try readUntil(timeout: timeout) { text in
                    text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().contains {
                        $0.hasPrefix(prefix)
                    }
                }
                readyLine = readyLine.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init) ?? ""
            }
        } catch {
            kill(pid, SIGKILL)
            _ = try? wait(timeout: 10)
            throw Failure(description: "\(error)\n\(name) stderr:\n\(stderr)")
        }
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            _ = waitpidRetrying(pid)
        }
        if signal >= 0 { close(signal) }
    }

    /// Reads the readiness descriptor until `done` holds for what arrived.
    private func readUntil(timeout: Int32, _ done: (String) -> Bool) throws -> String {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(Int(timeout))
        while !done(String(decoding: bytes, as: UTF8.self)) {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw Failure(description: "\(name) was not ready within \(timeout) s") }
            var entry = pollfd(fd: signal, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(left.components.seconds * 1000) + 1)
            guard ready > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(signal, raw.baseAddress, raw.count) } }
            guard n > 0 else { throw Failure(description: "\(name) exited or closed its readiness descriptor first") }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Waits for the peer to exit; its exit code, or minus the signal. Kills it and throws after `timeout` seconds
    /// (a safety net).
    @discardableResult
    public func wait(timeout: Int32 = 120) throws -> Int32 {
        if let status { return status }
        let pidfd = ProcessDescriptor.open(pid)
        if pidfd >= 0 {
            defer { close(pidfd) }
            var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            let ready = retryingOnInterrupt { poll(&entry, 1, timeout * 1000) }
            if ready == 0 {
                kill(pid, SIGKILL)
                status = decode(waitpidRetrying(pid) ?? 0)
                throw Failure(description: "\(name) did not exit within \(timeout) s; killed\n\(name) stderr:\n\(stderr)")
            }
        }
        let decoded = decode(waitpidRetrying(pid) ?? 0)
        status = decoded
        return decoded
    }

    /// SIGTERM, then `wait`.
    @discardableResult
    public func terminate(timeout: Int32 = 30) throws -> Int32 {
        if status == nil { kill(pid, SIGTERM) }
        return try wait(timeout: timeout)
    }

    private func decode(_ raw: Int32) -> Int32 { WaitStatus(raw).code }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}
