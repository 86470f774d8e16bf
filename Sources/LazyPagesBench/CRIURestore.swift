import Foundation
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// The lazy-pages daemon a real `criu restore --lazy-pages` is served by.
public enum LazyMonitor: String, Sendable, Codable, CaseIterable {
    /// `criu lazy-pages` (and, remote, `criu page-server --lazy-pages`).
    case criu
    /// `lazy-pagesd` (and, remote, `lazy-pages page-server`).
    case ours = "lazy-pagesd"
}

/// One lazy restore of a `CRIUDump`.
public struct CRIURestoreResult: Sendable, Codable {
    /// `criu restore` started → the daemon exited with every page home.
    public var seconds: Double
    public var daemonCPUSeconds: Double
    /// Largest RssAnon of the daemon (KiB).
    public var daemonPeakAnonKiB: Int
    public var pageServerCPUSeconds: Double?
    /// The daemon's summary (lazy-pagesd only).
    public var summary: String?
    /// lazy-pagesd only: RSTF read → restore finished (its log), i.e. the fill without CRIU's own restore work.
    public var fillSeconds: Double?
}

/// What the restore of one dump needs: the programs and, for remote pages, the client's view of the dump.
struct CRIURestorer {
    let criu: String
    let daemon: String
    /// `lazy-pages` (its `page-server`).
    let pageServer: String
    let tunables: DaemonTunables
    let timeout: Double

    /// Restores `dump` lazily served by `monitor`: starts the daemon (with `remoteView`, it fetches from a fresh page
    /// server of the same kind serving the dump; with `certificates`, both over TLS), runs `criu restore --lazy-pages -d`, and wakes the restored
    /// process group with SIGUSR1 — at once when `wakeAtOnce` (it works while the fill runs: reads, forks), else once
    /// the daemon has exited — and requires its `OK` on the result fifo. Timed: `criu restore` started → the daemon
    /// exited. The bench is the subreaper of what `criu restore -d` leaves, so the restored process is reaped (its
    /// pid free for the next restore) before this returns.
    func restore(
        _ dump: CRIUDump, monitor: LazyMonitor, work: String, remoteView: String? = nil,
        certificates: BenchCertificates? = nil, wakeAtOnce: Bool, extraDaemonArguments: [String] = []
    ) throws
        -> CRIURestoreResult
    {
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let images = remoteView ?? dump.directory
        var server: RemoteServer?
        defer { server?.stop() }
        if remoteView != nil {
            server = try RemoteServer(
                monitor: monitor, dump: dump.directory, work: work, criu: criu, ours: pageServer,
                tlsArguments: certificates?.serverArguments ?? [])
        }
        let remoteArguments = server.map {
            ["--page-server", "--address", PageServerRun.address, "--port", String($0.port)]
                + (certificates?.clientArguments ?? [])
        } ?? []
        let daemon: MonitorProcess
        switch monitor {
        case .ours:
            daemon = .ours(try DaemonRun(
                binary: self.daemon, imagesDirectory: images, workDirectory: work, tunables: tunables,
                extraArguments: remoteArguments + extraDaemonArguments))
        case .criu:
            daemon = .criu(try CRIUDaemon(
                criu: criu, arguments: ["lazy-pages", "-D", images, "-W", work] + remoteArguments, work: work))
        }
        defer { daemon.kill() }
        // CRIU checks a regular file's size on restore: the previous restore's verdict goes.
        truncate(dump.outputPath, off_t(dump.outputBytes))
        let started = monotonicSeconds()
        let restore = try ChildProcess(
            path: criu, arguments: ["restore", "-D", images, "-W", work, "--lazy-pages", "-d", "-o", "restore.log", "-v2"],
            stdoutPath: work + "/restore.stdout", stderrPath: work + "/restore.stderr")
        let restoreStatus = try restore.waitForExit().status
        guard restoreStatus == 0 else {
            throw BenchError("criu restore (\(monitor.rawValue)) exited \(restoreStatus): \(CRIUDump.tail(work + "/restore.log"))")
        }
        let result = open(dump.resultFifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard result >= 0 else { throw BenchError("open \(dump.resultFifo): \(SystemCallError.reason(errno))") }
        var reaped = false
        defer {
            close(result)
            if !reaped {  // the restored tree, when it did not end by itself (nothing else: it is not reaped yet)
                kill(-dump.pid, SIGKILL)
                _ = WaitStatus.wait(for: dump.pid)
            }
        }
        if wakeAtOnce { kill(-dump.pid, SIGUSR1) }
        let deadline = started + timeout
        while !daemon.poll() {
            if monotonicSeconds() > deadline {
                daemon.kill()
                throw BenchError("\(monitor.rawValue) still serving \(dump.mode) after \(Int(timeout)) s; killed")
            }
            daemon.waitBriefly()
        }
        let seconds = daemon.exitedAt - started
        if !wakeAtOnce { kill(-dump.pid, SIGUSR1) }
        let verdict = readLine(result, timeout: timeout)
        if !verdict.isEmpty {
            _ = WaitStatus.wait(for: dump.pid)
            reaped = true
        }
        let finished = try daemon.finish()
        let serverCPU = server?.stop()
        guard finished.status == 0 else { throw BenchError("\(monitor.rawValue) exited \(finished.status): \(finished.failure)") }
        guard verdict.hasPrefix("OK ") else {
            throw BenchError("restored \(dump.mode) workload (\(monitor.rawValue)): '\(verdict)' "
                + String(decoding: Array(readText(dump.outputPath).utf8.dropFirst(dump.outputBytes)).suffix(300), as: UTF8.self))
        }
        return CRIURestoreResult(
            seconds: seconds, daemonCPUSeconds: finished.cpuSeconds, daemonPeakAnonKiB: finished.peakAnonKiB,
            pageServerCPUSeconds: serverCPU, summary: finished.summary, fillSeconds: finished.fillSeconds)
    }
}

/// `criu lazy-pages ...` started and listening (`--status-fd`).
final class CRIUDaemon {
    let process: ChildProcess
    let work: String
    private var sampler: MemorySampler?
    private(set) var exitedAt: Double?

    init(criu: String, arguments: [String], work: String) throws {
        self.work = work
        process = try startWithStatus(
            criu, arguments + ["--status-fd", "3", "-o", "lazy-pages.log", "-v2"], stdout: work + "/lazy-pages.stdout",
            stderr: work + "/lazy-pages.stderr", what: "criu lazy-pages") { CRIUDump.tail(work + "/lazy-pages.log") }
        sampler = MemorySampler(pid: process.pid)
    }

    func poll() -> Bool {
        if exitedAt != nil { return true }
        if process.hasExited() { exitedAt = monotonicSeconds() }
        return exitedAt != nil
    }

    func finish() throws -> (status: Int32, cpuSeconds: Double, peakAnonKiB: Int) {
        let memory = sampler?.stop() ?? (0, 0)
        let usage = try process.waitForExit()
        return (usage.status, usage.cpuSeconds, memory.1)
    }
}

/// Either daemon, for the restore loop.
enum MonitorProcess {
    case ours(DaemonRun)
    case criu(CRIUDaemon)

    func poll() -> Bool {
        switch self {
        case .ours(let d): d.poll()
        case .criu(let d): d.poll()
        }
    }

    /// Sleeps on the daemon's exit pipe for up to 2 ms (the memory sampler's period).
    func waitBriefly() {
        switch self {
        case .ours(let d): _ = d.process.hasExited(waitingMilliseconds: 2)
        case .criu(let d): _ = d.process.hasExited(waitingMilliseconds: 2)
        }
    }

    var exitedAt: Double {
        switch self {
        case .ours(let d): d.exitedAt ?? monotonicSeconds()
        case .criu(let d): d.exitedAt ?? monotonicSeconds()
        }
    }

    func kill() {
        switch self {
        case .ours(let d): d.kill()
        case .criu(let d): if d.process.usage == nil { Glibc.kill(d.process.pid, SIGKILL) }
        }
    }

    func finish() throws
        -> (status: Int32, cpuSeconds: Double, peakAnonKiB: Int, summary: String?, fillSeconds: Double?, failure: String)
    {
        switch self {
        case .ours(let d):
            let r = try d.result()
            return (r.status, r.cpuSeconds, r.peakAnonKiB, r.summary, r.fillSeconds, d.failureText())
        case .criu(let d):
            let r = try d.finish()
            return (r.status, r.cpuSeconds, r.peakAnonKiB, nil, nil, CRIUDump.tail(d.work + "/lazy-pages.log"))
        }
    }
}

/// A page server of either kind serving one dump on 127.0.0.1, for one restore.
final class RemoteServer {
    private var ours: PageServerRun?
    private var criu: ChildProcess?
    let port: UInt16

    /// `tlsArguments`: the server's `--tls*` options (empty: plain TCP).
    init(monitor: LazyMonitor, dump: String, work: String, criu criuPath: String, ours oursPath: String,
         tlsArguments: [String] = []) throws {
        switch monitor {
        case .ours:
            let run = try PageServerRun(
                binary: oursPath, imagesDirectory: dump, scratch: work, extraArguments: tlsArguments)
            ours = run
            port = run.port
        case .criu:
            // One connection, served from the dump on disk; it needs fs.pipe-max-size >= 4 MiB.
            let serverWork = work + "/page-server"
            try FileManager.default.createDirectory(atPath: serverWork, withIntermediateDirectories: true)
            let log = serverWork + "/page-server.log"
            // criu refuses --port 0: a port the kernel just handed out and we released.
            let chosen = try freeLoopbackPort()
            let process = try startWithStatus(
                criuPath,
                ["page-server", "--lazy-pages", "-D", dump, "-W", serverWork, "--address", PageServerRun.address,
                 "--port", String(chosen), "--status-fd", "3", "-o", "page-server.log", "-v3"] + tlsArguments,
                stdout: serverWork + "/stdout", stderr: serverWork + "/stderr", what: "criu page-server") {
                CRIUDump.tail(log)
            }
            criu = process
            port = chosen
        }
    }

    /// Stops the server (SIGTERM; CRIU's exits by itself after its one session) and returns its CPU seconds.
    @discardableResult
    func stop() -> Double? {
        if let ours { return try? ours.stop().cpuSeconds }
        guard let criu else { return nil }
        if criu.usage == nil && !criu.hasExited(waitingMilliseconds: 1000) { Glibc.kill(criu.pid, SIGTERM) }
        return try? criu.waitForExit().cpuSeconds
    }
}

/// Starts a program that writes one byte to fd 3 once it is ready, and waits for it (or its exit).
private func startWithStatus(
    _ path: String, _ arguments: [String], stdout: String, stderr: String, what: String, log: () -> String
) throws -> ChildProcess {
    let ends = try makePipe()
    defer { close(ends.read) }
    let process: ChildProcess
    do {
        process = try ChildProcess(
            path: path, arguments: arguments, stdoutPath: stdout, stderrPath: stderr, descriptors: [(ends.write, 3)])
    } catch {
        close(ends.write)
        throw error
    }
    close(ends.write)
    var entry = pollfd(fd: ends.read, events: Int16(POLLIN), revents: 0)
    var byte: UInt8 = 0
    guard Glibc.poll(&entry, 1, 60_000) > 0, read(ends.read, &byte, 1) == 1 else {
        Glibc.kill(process.pid, SIGKILL)
        _ = try? process.waitForExit()
        throw BenchError("\(what) did not start: \(log())")
    }
    return process
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read, closed).
private func freeLoopbackPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BenchError("socket: \(SystemCallError.reason(errno))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr(PageServerRun.address)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else { throw BenchError("bind 127.0.0.1:0: \(SystemCallError.reason(errno))") }
    return UInt16(bigEndian: address.sin_port)
}
