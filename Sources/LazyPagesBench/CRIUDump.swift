import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real process, checkpointed by a real `criu dump`: the workload (`lp-criu-workload MODE MIB`) is started in a
/// session of its own with its output in a file, fills its memory, says `ready PID`, and is dumped (and so killed)
/// into `directory`. Every restore of the dump brings the same pid back, so the dump is restored once at a time.
struct CRIUDump {
    let directory: String
    let pid: pid_t
    let mode: String
    let bytes: Int
    /// The workload's stdout (restored with the process: it keeps writing there).
    let outputPath: String
    /// Its size at the dump.
    let outputBytes: Int

    init(criu: String, workload: String, mode: String, bytes: Int, directory: String, timeout: Double) throws {
        self.directory = directory
        self.mode = mode
        self.bytes = bytes
        outputPath = directory + ".out"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let child = try spawnDetached(path: workload, arguments: [mode, String(bytes >> 20)], output: outputPath)
        let deadline = monotonicSeconds() + timeout
        var announced: pid_t?
        while announced == nil {
            if let line = readText(outputPath).split(separator: "\n").first(where: { $0.hasPrefix("ready ") }) {
                announced = pid_t(line.split(separator: " ")[1])
                break
            }
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                throw BenchError("\(workload) \(mode) exited before it was ready: \(readText(outputPath).suffix(300))")
            }
            guard monotonicSeconds() < deadline else {
                kill(child, SIGKILL)
                _ = waitpid(child, nil, 0)
                throw BenchError("\(workload) \(mode) not ready after \(Int(timeout)) s")
            }
            usleep(5_000)  // polling the output file: the workload must not hold a pipe of ours (it is dumped)
        }
        guard announced == child else {
            kill(child, SIGKILL)
            _ = waitpid(child, nil, 0)
            throw BenchError("\(workload) said ready as pid \(announced ?? -1), not \(child)")
        }
        pid = child
        let dump = try ChildProcess(
            path: criu, arguments: ["dump", "-t", String(child), "-D", directory, "-o", "dump.log", "-v2"],
            stdoutPath: directory + "/dump.stdout", stderrPath: directory + "/dump.stderr")
        let usage = try dump.waitForExit()
        var status: Int32 = 0
        if usage.status != 0 {
            kill(child, SIGKILL)
            _ = waitpid(child, &status, 0)
            throw BenchError("criu dump of \(mode) exited \(usage.status): \(CRIUDump.tail(directory + "/dump.log"))")
        }
        _ = waitpid(child, &status, 0)  // criu dump kills the dumped process
        outputBytes = readText(outputPath).utf8.count
        // Written back now, so that writeback does not compete with the restores (as for the synthetic image).
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix("pages-") {
            let fd = open(directory + "/" + name, O_RDONLY | O_CLOEXEC)
            if fd >= 0 {
                fsync(fd)
                close(fd)
            }
        }
    }

    /// The last error lines of a CRIU log.
    static func tail(_ path: String) -> String {
        let lines = readText(path).split(separator: "\n")
        let errors = lines.filter { $0.hasPrefix("Error") }
        return (errors.isEmpty ? Array(lines.suffix(3)) : Array(errors.suffix(3))).joined(separator: " | ")
    }
}

/// Starts `path arguments...` in a new session, stdin /dev/null, stdout and stderr to `output`, no other
/// descriptor (ours are all close-on-exec): what `criu dump` checkpoints without `--shell-job` or external files.
func spawnDetached(path: String, arguments: [String], output: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | 0x80))  // 0x80: POSIX_SPAWN_SETSID (glibc), not imported
    let argv = ([path] + arguments).map { strdup($0) }
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    let rc = (argv + [nil]).withUnsafeBufferPointer {
        posix_spawn(&child, path, &actions, &attributes, $0.baseAddress!, environ)
    }
    guard rc == 0 else { throw BenchError("cannot start \(path): \(String(cString: strerror(rc)))") }
    return child
}
