import Foundation
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// Why a benchmark step could not run. The message says which step and what failed.
public struct BenchError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What `wait4` reports about an exited child.
public struct ChildUsage: Sendable, Codable {
    /// Exit code, or minus the signal that ended it.
    public var status: Int32
    public var userSeconds: Double
    public var systemSeconds: Double
    /// `ru_maxrss` (KiB): peak resident set, file-backed pages (the mapped pages file) included.
    public var maxRSSKiB: Int
    public var cpuSeconds: Double { userSeconds + systemSeconds }
}

/// A process started with `posix_spawn`: stdout and stderr go to files, optional descriptors are passed at fixed
/// numbers, and the read end of a pipe whose write end only the child holds (as fd 63) tells exactly when it
/// exits (end of file).
final class ChildProcess {
    let pid: pid_t
    /// Reaches end of file when the child (and anything it forked) has exited.
    let exitPipe: Int32
    let stdoutPath: String
    let stderrPath: String
    private(set) var usage: ChildUsage?

    /// Starts `path arguments...`; `descriptors` maps our fds to the child's fd numbers (above 2).
    init(path: String, arguments: [String], stdoutPath: String, stderrPath: String,
         descriptors: [(ours: Int32, theirs: Int32)] = []) throws {
        self.stdoutPath = stdoutPath
        self.stderrPath = stderrPath
        let exitEnds = try makePipe()
        defer { close(exitEnds.write) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        for (ours, theirs) in descriptors { posix_spawn_file_actions_adddup2(&actions, ours, theirs) }
        posix_spawn_file_actions_adddup2(&actions, exitEnds.write, 63)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ([path] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = (argv + [nil]).withUnsafeBufferPointer {
            posix_spawn(&child, path, &actions, &attributes, $0.baseAddress!, environ)
        }
        guard rc == 0 else {
            close(exitEnds.read)
            throw BenchError("cannot start \(path): \(SystemCallError.reason(rc))")
        }
        pid = child
        exitPipe = exitEnds.read
    }

    deinit {
        if usage == nil {
            kill(pid, SIGKILL)
            _ = try? waitForExit()
        }
        close(exitPipe)
    }

    /// True once the process has exited (a zombie not yet reaped counts).
    func hasExited(waitingMilliseconds: Int32 = 0) -> Bool {
        var entry = pollfd(fd: exitPipe, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, waitingMilliseconds) > 0
    }

    /// Reaps the process and returns its usage.
    @discardableResult
    func waitForExit() throws -> ChildUsage {
        if let usage { return usage }
        var raw: Int32 = 0
        var ru = rusage()
        do { _ = try systemCall("wait4 \(pid)") { wait4(pid, &raw, 0, &ru) } } catch { throw BenchError("\(error)") }
        let result = ChildUsage(
            status: WaitStatus(raw).code,
            userSeconds: Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6,
            systemSeconds: Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6,
            maxRSSKiB: ru.ru_maxrss)
        usage = result
        return result
    }

    func output() -> String { readText(stdoutPath) }
    func errors() -> String { readText(stderrPath) }
}

/// A pipe, both ends close-on-exec.
func makePipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw BenchError("pipe: \(SystemCallError.reason(errno))") }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return (fds[0], fds[1])
}

/// The whole file as text ("" when unreadable).
func readText(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = retryingOnInterrupt { read(fd, &buffer, buffer.count) }
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Peak memory of a running process as `/proc/PID/status` shows it, sampled every 2 ms on a thread of its own
/// until `stop()`.
final class MemorySampler: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var rss = 0
    private var anon = 0
    private let done = DispatchSemaphore(value: 0)

    init(pid: pid_t) {
        let thread = Thread { [self] in
            while true {
                lock.lock()
                let stop = stopped
                lock.unlock()
                if stop { break }
                let text = readText("/proc/\(pid)/status")
                var hwm = 0, anonNow = 0
                for line in text.split(separator: "\n") {
                    if line.hasPrefix("VmHWM:") { hwm = Self.kib(line) }
                    else if line.hasPrefix("RssAnon:") { anonNow = Self.kib(line) }
                }
                lock.lock()
                rss = max(rss, hwm)
                anon = max(anon, anonNow)
                lock.unlock()
                usleep(2000)
            }
            done.signal()
        }
        thread.start()
    }

    /// Stops sampling; returns (VmHWM, largest RssAnon) in KiB. VmHWM includes the mapped pages file; RssAnon is
    /// the process's own memory.
    func stop() -> (peakRSSKiB: Int, peakAnonKiB: Int) {
        lock.lock()
        let first = !stopped
        stopped = true
        lock.unlock()
        if first { done.wait() }
        lock.lock()
        defer { lock.unlock() }
        return (rss, anon)
    }

    private static func kib(_ line: Substring) -> Int {
        Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A fresh directory under /tmp, removed with everything in it by `remove()`.
final class ScratchDirectory {
    let path: String
    init(prefix: String) throws {
        var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw BenchError("mkdtemp: \(SystemCallError.reason(errno))") }
        path = String(cString: made)
    }

    func remove() {
        removeTree(path)
    }
}

/// `rm -rf path` (files, symlinks and directories; never follows symlinks).
func removeTree(_ path: String) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    if (info.st_mode & S_IFMT) == S_IFDIR {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                removeTree(path + "/" + name)
            }
            closedir(dir)
        }
        rmdir(path)
    } else {
        unlink(path)
    }
}
