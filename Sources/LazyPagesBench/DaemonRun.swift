import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Engine tunables the benchmark passes to `lazy-pagesd` (its own command-line flags).
public struct DaemonTunables: Sendable, Codable, Equatable {
    public var faultAround: Int?
    public var fillChunk: Int?
    public var fillChunkMax: Int?
    public var spinAfterFault: Int?
    public var background = true

    public init(faultAround: Int? = nil, fillChunk: Int? = nil, background: Bool = true) {
        self.faultAround = faultAround
        self.fillChunk = fillChunk
        self.background = background
    }

    var arguments: [String] {
        var args: [String] = []
        if let faultAround { args += ["--fault-around", String(faultAround)] }
        if let fillChunk { args += ["--fill-chunk", String(fillChunk)] }
        if let fillChunkMax { args += ["--fill-chunk-max", String(fillChunkMax)] }
        if let spinAfterFault { args += ["--spin-after-fault", String(spinAfterFault)] }
        if !background { args.append("--no-background") }
        return args
    }
}

/// What one daemon did, from its exit status, rusage, sampled `/proc` status, summary line and log.
public struct DaemonResult: Sendable, Codable {
    public var status: Int32
    public var cpuSeconds: Double
    public var userSeconds: Double
    public var systemSeconds: Double
    /// Peak RSS (VmHWM / ru_maxrss, KiB): includes the pages file the daemon maps and copies from.
    public var peakRSSKiB: Int
    /// Largest RssAnon sampled (KiB): the daemon's own memory.
    public var peakAnonKiB: Int
    /// From the daemon's log: RSTF read ("all tasks announced") to "restore finished", seconds.
    public var fillSeconds: Double?
    /// Monotonic time the daemon was seen to exit.
    public var exitedAt: Double
    public var summary: String
    public var pagesCopied: Int
    public var pagesOnFault: Int
    public var pagesInBackground: Int
    public var faults: Int
}

/// One `lazy-pagesd` serving one restore: started listening on `<work>/lazy-pages.socket`, logging at info level
/// to `<work>/daemon.log`.
final class DaemonRun {
    let process: ChildProcess
    let workDirectory: String
    private var sampler: MemorySampler?
    private(set) var exitedAt: Double?

    init(
        binary: String, imagesDirectory: String, workDirectory: String, tunables: DaemonTunables,
        extraArguments: [String] = []
    ) throws {
        self.workDirectory = workDirectory
        let ends = try makePipe()
        let pipeFDs = [ends.read, ends.write]
        defer { close(pipeFDs[0]) }
        let daemonArguments = ["-D", imagesDirectory, "-W", workDirectory, "--status-fd", "3", "-v3", "-o", "daemon.log"]
            + tunables.arguments + extraArguments
        // Profiling hook: $LP_BENCH_DAEMON_PREFIX (e.g. "/usr/bin/strace -c -o /tmp/s") runs the daemon under a tool.
        var path = binary
        var arguments = daemonArguments
        if let prefix = ProcessInfo.processInfo.environment["LP_BENCH_DAEMON_PREFIX"], !prefix.isEmpty {
            let words = prefix.split(separator: " ").map(String.init)
            path = words[0]
            arguments = Array(words.dropFirst()) + [binary] + arguments
        }
        do {
            process = try ChildProcess(
                path: path, arguments: arguments, stdoutPath: workDirectory + "/daemon.out",
                stderrPath: workDirectory + "/daemon.err", descriptors: [(pipeFDs[1], 3)])
        } catch {
            close(pipeFDs[1])
            throw error
        }
        close(pipeFDs[1])
        // Wait for "listening" (one byte on fd 3), or EOF if it died.
        var entry = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
        let ready = Glibc.poll(&entry, 1, 60_000)
        var byte: UInt8 = 0
        guard ready > 0, read(pipeFDs[0], &byte, 1) == 1 else {
            Glibc.kill(process.pid, SIGKILL)
            _ = try? process.waitForExit()
            throw BenchError("lazy-pagesd did not start listening: \(process.errors())")
        }
        sampler = MemorySampler(pid: process.pid)
    }

    /// Samples memory; records the exit time once the process has exited. Returns true once exited.
    func poll() -> Bool {
        if exitedAt != nil { return true }
        if process.hasExited() {
            exitedAt = monotonicSeconds()
            return true
        }
        return false
    }

    /// Kills the daemon unless it was already reaped.
    func kill(_ signal: Int32 = SIGKILL) { if process.usage == nil { Glibc.kill(process.pid, signal) } }

    /// Reaps the daemon (after `poll()` returned true) and gathers what it reported.
    func result() throws -> DaemonResult {
        let memory = sampler?.stop() ?? (0, 0)
        let usage = try process.waitForExit()
        // A completed restore prints its summary on stdout; one stopped by SIGTERM (the demand-only scenarios)
        // prints it on stderr after "restore failed: cancelled".
        let summary = (process.output() + "\n" + process.errors()).split(separator: "\n")
            .last { $0.hasPrefix("lazy-pages:") }.map(String.init) ?? ""
        let log = readText(workDirectory + "/daemon.log")
        func number(before word: String) -> Int {
            let words = summary.replacingOccurrences(of: "(", with: " ").split(separator: " ")
            for (i, w) in words.enumerated() where i > 0 && w.hasPrefix(word) {
                if let n = Int(words[i - 1]) { return n }
            }
            return 0
        }
        return DaemonResult(
            status: usage.status, cpuSeconds: usage.cpuSeconds, userSeconds: usage.userSeconds,
            systemSeconds: usage.systemSeconds, peakRSSKiB: max(usage.maxRSSKiB, memory.0),
            peakAnonKiB: memory.1,
            fillSeconds: Self.logInterval(log, from: "all tasks announced", to: "restore finished"),
            exitedAt: exitedAt ?? monotonicSeconds(), summary: summary,
            pagesCopied: number(before: "pages"), pagesOnFault: number(before: "on"),
            pagesInBackground: number(before: "in"), faults: number(before: "faults"))
    }

    func failureText() -> String {
        let errors = process.errors().split(separator: "\n").suffix(5).joined(separator: " | ")
        return "lazy-pagesd exited \(process.usage?.status ?? -1): \(errors)"
    }

    /// Seconds between the first log lines holding `from` and `to` (`...THH:MM:SS.fff ...` timestamps).
    static func logInterval(_ log: String, from: String, to: String) -> Double? {
        func time(of needle: String) -> Double? {
            guard let line = log.split(separator: "\n").first(where: { $0.contains(needle) }),
                  let t = line.firstIndex(of: "T")
            else { return nil }
            let clock = line[line.index(after: t)...].prefix { $0 != " " && $0 != "Z" && $0 != "+" }
            let parts = clock.split(separator: ":")
            guard parts.count == 3, let h = Double(parts[0]), let m = Double(parts[1]), let s = Double(parts[2])
            else { return nil }
            return h * 3600 + m * 60 + s
        }
        guard let a = time(of: from), let b = time(of: to) else { return nil }
        return b >= a ? b - a : b + 86400 - a
    }
}

/// Waits until every daemon has exited (sampling their memory every `interval` ms), killing them all after
/// `timeout` seconds.
func waitForDaemons(_ daemons: [DaemonRun], timeout: Double, interval: Int32 = 2) throws {
    let deadline = monotonicSeconds() + timeout
    while true {
        var running = 0
        for daemon in daemons where !daemon.poll() { running += 1 }
        if running == 0 { return }
        if monotonicSeconds() > deadline {
            daemons.forEach { $0.kill() }
            throw BenchError("lazy-pagesd still running after \(Int(timeout)) s; killed")
        }
        // Sleep on the first running daemon's exit pipe so its exit is seen at once.
        if let first = daemons.first(where: { $0.exitedAt == nil }) { _ = first.process.hasExited(waitingMilliseconds: interval) }
    }
}
