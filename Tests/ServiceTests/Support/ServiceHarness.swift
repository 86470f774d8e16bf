import CRIUImages
import Foundation
import LazyPagesControl
import RestoreSimulator
import TestSupport

/// A running `lazy-pagesd serve` on a temporary control socket, with a notify socket standing in for systemd.
final class ServiceDaemon {
    let directory: String
    let controlSocket: String
    let notify: NotifyReceiver
    let process: DaemonProcess
    /// What READY=1 came with (STATUS=...).
    let readyMessage: String

    /// With `umask` (e.g. "000"), the daemon runs under that umask (the umask a job socket must not depend on).
    init(_ extra: [String] = [], umask: String? = nil) throws {
        // A write to a child that already exited must fail with EPIPE, not kill the whole test runner.
        signal(SIGPIPE, SIG_IGN)
        directory = try makeTemporaryDirectory("lp-service")
        chmod(directory, 0o755)
        controlSocket = directory + "/control.sock"
        notify = try NotifyReceiver(path: directory + "/notify")
        let daemon = try BuiltProducts.path(of: "lazy-pagesd")
        let arguments = ["serve", "--control-socket", controlSocket, "-vv"] + extra
        if let umask {
            process = try DaemonProcess(
                "/bin/sh", ["-c", "umask \(umask) && exec \"$0\" \"$@\"", daemon] + arguments,
                environment: ["NOTIFY_SOCKET=\(notify.path)"], directory: directory)
        } else {
            process = try DaemonProcess(
                daemon, arguments, environment: ["NOTIFY_SOCKET=\(notify.path)"], directory: directory)
        }
        readyMessage = try notify.receive()
        guard readyMessage.hasPrefix("READY=1\n") else { throw Emulator.Failure(description: "no READY: \(readyMessage)") }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// The next notification starting with `prefix`, skipping others (STATUS= updates as jobs come and go).
    func notification(startingWith prefix: String) throws -> String {
        while true {
            let message = try notify.receive()
            if message.hasPrefix(prefix) { return message }
        }
    }

    /// `lazy-pages ARGS --control-socket ...` run to completion.
    func cli(_ arguments: [String], as user: UInt32? = nil) throws -> Spawn.Output {
        var argv = [try BuiltProducts.path(of: "lazy-pages")] + arguments + ["--control-socket", controlSocket]
        if let user { argv = ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups"] + argv }
        return try Spawn.run(argv, timeoutMilliseconds: 90_000)
    }

    /// `lazy-pages ARGS --control-socket ...` run to completion as a test user (with its groups).
    func cli(_ arguments: [String], user: TestUsers.User) throws -> Spawn.Output {
        let argv = [try BuiltProducts.path(of: "lazy-pages")] + arguments + ["--control-socket", controlSocket]
        return try Spawn.run(TestUsers.asUser(user, argv), timeoutMilliseconds: 90_000)
    }

    /// Adds a job as `user`; its id.
    func add(_ arguments: [String], user: TestUsers.User) throws -> String {
        let output = try cli(["add"] + arguments, user: user)
        guard output.exitCode == 0 else { throw Emulator.Failure(description: "add failed: \(output.stderr)") }
        return output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Waits until the daemon's log holds `count` lines containing `text` (at most 60 s, a safety net).
    func waitForLog(_ text: String, count: Int = 1) -> Bool {
        TestSupport.waitUntil(seconds: 60) { process.stderr.components(separatedBy: "\n").filter({ $0.contains(text) }).count >= count }
    }

    /// Adds a job with `lazy-pages add ...`; its id.
    func add(_ arguments: [String]) throws -> String {
        let output = try cli(["add"] + arguments)
        guard output.exitCode == 0 else { throw Emulator.Failure(description: "add failed: \(output.stderr)") }
        return output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// One request straight over the socket.
    func request(_ request: ControlRequest) throws -> ControlReply {
        try ControlClient(socketPath: controlSocket).send(request)
    }

    /// Polls `status` until the job is in `state` (a condition, not a delay: at most 30 s as a safety net).
    func waitUntil(_ id: String, is state: JobState) throws {
        if try TestSupport.waitUntil(seconds: 30, { try request(ControlRequest(op: .status, id: id)).job?.state == state }) {
            return
        }
        throw Emulator.Failure(description: "job \(id) never became \(state)")
    }
}

/// A snapshot memory file of never-zero bytes, and a fresh socket path per job.
final class MemoryFixture {
    let directory: String
    let memoryFile: String

    init(bytes: Int) throws {
        directory = try makeTemporaryDirectory("lp-service-fc")
        memoryFile = directory + "/memory"
        var data = [UInt8](repeating: 0, count: bytes)
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = (UInt64(i) &+ 1) &* 0x9E37_79B9_7F4A_7C15 | 0x0101_0101_0101_0101 }
        }
        guard FileManager.default.createFile(atPath: memoryFile, contents: Data(data)) else {
            throw Emulator.Failure(description: "cannot write \(memoryFile)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func socket(_ name: String) -> String { directory + "/\(name).sock" }
}

/// A CRIU image set (two tasks, mixed pages) and work directories for jobs.
final class ImageFixture {
    let directory: String
    let images: String

    init() throws {
        directory = try makeTemporaryDirectory("lp-service-criu")
        images = directory + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        try SyntheticImages.writeMixed(directory: images, tasks: 2, totalBytes: 2 << 20)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func workDirectory(_ name: String) throws -> String {
        let path = directory + "/work-\(name)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// Runs `argv` to completion on its own thread; the returned closure waits for its output.
func runInBackground(_ argv: [String]) -> () throws -> Spawn.Output {
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var result: Result<Spawn.Output, any Error>!
    Thread {
        result = Result { try Spawn.run(argv, timeoutMilliseconds: 90_000) }
        done.signal()
    }.start()
    return {
        done.wait()
        return try result.get()
    }
}
