import Foundation
import Glibc
import LinuxSupport

/// Runs a program to completion with `posix_spawn` (the test process is never forked; an empty signal mask and
/// default dispositions, `SpawnAttributes`) and captures its output.
public enum Spawn {
    public struct Output {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        public var exitCode: Int32? { WaitStatus(status).exitCode }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func run(_ argv: [String], timeoutMilliseconds: Int32 = 30_000) throws -> Output {
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        // Socket pairs stand in for pipes: they can be made close-on-exec atomically (pipe2 is not imported).
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &out) == 0, socketpair(AF_UNIX, type, 0, &err) == 0 else {
            throw Failure(description: "socketpair: errno \(errno)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, err[1], 2)
        // An empty signal mask and default dispositions, as for every child of the tests (`SpawnAttributes`).
        let attributes = SpawnAttributes()
        var pid: pid_t = 0
        let rc = withCStrings(argv) { posix_spawnp(&pid, argv[0], &actions, &attributes.value, $0, environ) }
        close(out[1])
        close(err[1])
        defer {
            close(out[0])
            close(err[0])
        }
        guard rc == 0 else { throw Failure(description: "posix_spawn \(argv[0]): errno \(rc)") }

        var captured: [Int32: [UInt8]] = [out[0]: [], err[0]: []]
        var open = [out[0], err[0]]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = retryingOnInterrupt { poll(&fds, nfds_t(fds.count), timeoutMilliseconds) }
            guard ready > 0 else {
                kill(pid, SIGKILL)
                _ = waitpidRetrying(pid)
                throw Failure(description: "\(argv) produced no output within the timeout")
            }
            for entry in fds where entry.revents != 0 {
                let n = buffer.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(entry.fd, raw.baseAddress, raw.count) } }
                if n > 0 {
                    captured[entry.fd]! += buffer[..<n]
                } else {
                    open.removeAll { $0 == entry.fd }
                }
            }
        }
        guard let status = waitpidRetrying(pid) else { throw Failure(description: "waitpid: errno \(errno)") }
        return Output(
            status: status, stdout: String(decoding: captured[out[0]]!, as: UTF8.self),
            stderr: String(decoding: captured[err[0]]!, as: UTF8.self))
    }

    /// The first of `candidates` that is an executable file.
    /// Runs `argv` with stdout and stderr on one pipe (as `2>&1 | tee` does): its exit status and that output.
    public static func runMerged(_ argv: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    public static func tool(_ candidates: String...) -> String? {
        candidates.first { access($0, X_OK) == 0 }
    }
}

/// `waitpid` retried on `EINTR`; the raw status (`WaitStatus` decodes it), or nil on failure.
public func waitpidRetrying(_ pid: pid_t) -> Int32? {
    var status: Int32 = 0
    return retryingOnInterrupt { waitpid(pid, &status, 0) } == pid ? status : nil
}

/// Calls `body` with a NULL-terminated C array of `strings`.
public func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return body(pointers)
}

