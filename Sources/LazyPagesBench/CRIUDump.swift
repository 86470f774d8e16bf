import Foundation
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// A real process, checkpointed by a real `criu dump`: `lp-criu-workload --mode MODE` is started in a session of
/// its own with its output in a file, fills its memory, says `READY pid=P` on a fifo, and is dumped (and so
/// killed) into `directory`. Every restore of the dump brings the same pid back, so it is restored once at a time;
/// after each, SIGUSR1 to its process group makes every process check every byte and the first report `OK ...` or
/// `FAIL ...` on the result fifo.
struct CRIUDump {
    let directory: String
    let pid: pid_t
    let mode: String
    let bytes: Int
    /// The workload's stdout and stderr (restored with the process).
    let outputPath: String
    /// Its size at the dump: CRIU refuses to restore a regular file whose size changed.
    let outputBytes: Int
    /// The fifo the restored workload reports on (opened by path after each restore).
    let resultFifo: String

    init(criu: String, workload: String, mode: String, bytes: Int, directory: String, timeout: Double) throws {
        self.directory = directory
        self.mode = mode
        self.bytes = bytes
        outputPath = directory + ".out"
        resultFifo = directory + ".result"
        let readyFifo = directory + ".ready"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for fifo in [readyFifo, resultFifo] {
            unlink(fifo)
            guard mkfifo(fifo, 0o600) == 0 else { throw BenchError("mkfifo \(fifo): \(SystemCallError.reason(errno))") }
        }
        let ready = open(readyFifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard ready >= 0 else { throw BenchError("open \(readyFifo): \(SystemCallError.reason(errno))") }
        defer { close(ready) }
        let child = try spawnDetached(
            path: workload,
            arguments: ["--mode", mode, "--mib", String(bytes >> 20), "--seed", "1", "--ready", readyFifo,
                        "--result", resultFifo],
            output: outputPath)
        let line = readLine(ready, timeout: timeout)
        guard line.hasPrefix("READY "), let said = field(line, "pid").flatMap({ pid_t($0) }), said == child else {
            kill(child, SIGKILL)
            _ = waitpid(child, nil, 0)
            throw BenchError("\(workload) --mode \(mode) did not say READY with its pid (said '\(line)'): "
                + readText(outputPath).suffix(300))
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

    func remove() {
        removeTree(directory)
        for path in [outputPath, resultFifo, directory + ".ready"] { unlink(path) }
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
    guard rc == 0 else { throw BenchError("cannot start \(path): \(SystemCallError.reason(rc))") }
    return child
}

/// One line (without the newline) from a non-blocking fifo `fd`: what arrived before the writer closed it or before
/// `timeout` seconds; "" if nothing.
func readLine(_ fd: Int32, timeout: Double) -> String {
    let deadline = monotonicSeconds() + timeout
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 512)
    while !bytes.contains(UInt8(ascii: "\n")) {
        let left = deadline - monotonicSeconds()
        guard left > 0 else { break }
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&entry, 1, Int32(min(left, 1) * 1000))
        if ready < 0 && errno != EINTR { break }
        guard ready > 0 else { continue }
        let n = read(fd, &buffer, buffer.count)
        if n > 0 {
            bytes += buffer[0..<n]
        } else if n == 0 {
            // No writer: before the first writer opens the fifo Linux reports no hang-up, so this is after one.
            break
        } else if errno != EAGAIN && errno != EINTR {
            break
        }
    }
    return String(decoding: bytes.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
}
