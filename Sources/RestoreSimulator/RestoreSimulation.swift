import CRIUImages
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Plays `criu restore --lazy-pages` against a running lazy-pages daemon: every task of `pstree.img` becomes an
/// `lp-workload` process that maps its image memory, fills its eager pages, registers its lazy VMAs with a uffd
/// made exactly like CRIU's restorer makes it, and then checks its memory byte for byte while the daemon fills it.
///
/// Use from one thread: `start()`, optionally `releaseWaiting()` (which may also be called from another thread
/// while `wait()` runs), then `wait()` once.
public final class RestoreSimulation: @unchecked Sendable {
    public let options: SimulationOptions
    private let images: ImageSet
    private let workloadPath: String
    private var workloads: [WorkloadProcess] = []
    private var zombieTasks: [Int32] = []
    private var startedAt: ContinuousClock.Instant?
    private var planDirectory: String?
    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    /// Reads `pstree.img` and finds the workload executable.
    public init(options: SimulationOptions) throws {
        self.options = options
        images = try ImageSet(directory: options.imagesDirectory)
        guard let path = options.workloadPath ?? Self.defaultWorkloadPath() else {
            throw SimulationError("cannot find lp-workload next to \(Self.executablePath() ?? "this executable")")
        }
        guard access(path, X_OK) == 0 else {
            throw SimulationError("lp-workload is not executable: \(path): \(SystemCallError.reason(errno))"
                + " (build it with `swift build --product lp-workload`, or set LP_WORKLOAD to its path)")
        }
        workloadPath = path
    }

    deinit { removePlans() }

    /// Connects to `<workDirectory>/lazy-pages.socket` (failing with "connect to lazy-pages.socket failed" when
    /// nobody listens, before starting anything), then for each task in `pstree.img` order: starts its workload,
    /// takes its uffd, sends the virtual pid and the uffd (a zombie — named in the options or dead in its
    /// `core-<pid>.img` — its negated pid only) and closes our copy;
    /// then "RSTF" (unless `hangUpBeforeRSTF`) and closes the socket. On failure every started workload is killed.
    public func start() throws {
        precondition(startedAt == nil, "start() runs once")
        startedAt = .now
        // Three descriptors per workload (its socket, stdout, stderr) are held until it exits.
        DescriptorLimit.raise(wanted: 3 * images.tasks.count + 256)
        let connection = try LazyPagesConnection(workDirectory: options.workDirectory)
        do {
            var template = Array("\(options.scratchParent)/lp-restore-sim.XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else {
                throw SimulationError("mkdtemp: \(SystemCallError.reason(errno))")
            }
            let directory = String(cString: made)
            planDirectory = directory
            for task in images.tasks {
                let virtualPid = Int32(bitPattern: task.pid)
                // A zombie: named in the options, or (as CRIU's restorer decides) dead in its core image.
                if try options.zombies.contains(virtualPid) || !images.hasMemory(pid: virtualPid) {
                    try connection.sendZombie(virtualPid: virtualPid)
                    zombieTasks.append(virtualPid)
                    continue
                }
                let plan = WorkloadPlan(process: try images.process(pid: virtualPid))
                let planPath = directory + "/plan-\(virtualPid)"
                try Self.write(plan.text, to: planPath)
                let workload = try WorkloadProcess(
                    virtualPid: virtualPid, path: workloadPath,
                    arguments: [planPath, options.scenario, String(options.seed)])
                workloads.append(workload)
                let uffd = try workload.receiveDescriptor(timeout: options.timeout)
                do {
                    try connection.sendTask(virtualPid: virtualPid, uffd: uffd)
                } catch {
                    // As CRIU does on a failed restore: kill the tasks first. Closing our copy of a uffd that never
                    // reached the daemon while its task still runs would hand that task zero pages.
                    for workload in workloads { workload.killGroup() }
                    close(uffd)
                    throw error
                }
                close(uffd)
                // Every spawn copies our descriptor table and the exec closes it again: collect what finished
                // workloads wrote and let go of their descriptors, or a restore of thousands of tasks is quadratic.
                if workloads.count % 32 == 0 { try collectOutput(timeoutMilliseconds: 0) }
            }
            if !options.hangUpBeforeRSTF { try connection.sendRestoreFinished() }
            connection.close()
        } catch {
            connection.close()
            for workload in workloads { workload.killGroup() }
            for workload in workloads { workload.reap() }
            throw error
        }
    }

    /// Kills every workload and what it forked, as `criu restore` does to its tasks when a restore fails.
    /// Safe to call while `wait()` runs on another thread.
    public func killAll() {
        for workload in workloads { workload.killGroup() }
    }

    /// Tells every `idle` workload to check its memory now (one byte on its fd 3).
    public func releaseWaiting() {
        for workload in workloads { workload.sendGo() }
    }

    /// Waits until every workload and everything it forked has exited (their stdout/stderr reach end of file),
    /// collecting their lines and exit statuses. After `options.timeout` (counted from `start()`) the remaining
    /// workloads are killed and reported as failed.
    public func wait() throws -> SimulationReport {
        guard let startedAt else { throw SimulationError("wait() before start()") }
        let deadline = startedAt + options.timeout
        var timedOut = Set<Int32>()
        var killedAt: ContinuousClock.Instant?
        while true {
            let owners = workloads.filter { $0.stdoutPipe >= 0 || $0.stderrPipe >= 0 }
            if owners.isEmpty { break }
            let now = ContinuousClock.now
            if killedAt == nil && now >= deadline {
                killedAt = now
                for w in owners where !timedOut.contains(w.virtualPid) {
                    timedOut.insert(w.virtualPid)
                    w.killGroup()
                }
            }
            if let killedAt, now >= killedAt + .seconds(5) { break }  // something outside the group holds a pipe
            let limit = (killedAt.map { $0 + .seconds(5) } ?? deadline) - now
            let ms = Int32(clamping: max(1, limit.components.seconds * 1000 + limit.components.attoseconds / 1_000_000_000_000_000))
            try collectOutput(from: owners, timeoutMilliseconds: ms)
        }
        var reports: [TaskReport] = []
        for w in workloads {
            if timedOut.contains(w.virtualPid) || w.stdoutPipe >= 0 || w.stderrPipe >= 0 { w.killGroup() }
            let status = w.reap()
            var lines = Self.lines(w.stdoutBytes)
            lines += Self.lines(w.stderrBytes).map { "stderr: " + $0 }
            if timedOut.contains(w.virtualPid) {
                lines.append("simulator: timed out after \(options.timeout); killed the workload's process group")
            }
            let passed = status == 0 && !timedOut.contains(w.virtualPid)
                && lines.contains { $0.hasPrefix("OK ") } && !lines.contains { $0.hasPrefix("FAIL") }
            reports.append(
                TaskReport(virtualPid: w.virtualPid, realPid: w.pid, exitStatus: status, passed: passed, output: lines))
        }
        for pid in zombieTasks {
            reports.append(
                TaskReport(
                    virtualPid: pid, realPid: 0, exitStatus: 0, passed: true,
                    output: ["simulator: zombie, sent as pid \(-pid) without a uffd"]))
        }
        removePlans()
        return SimulationReport(tasks: reports)
    }

    /// Polls the output of `workloads` (default: every workload) up to `timeoutMilliseconds`, appends what
    /// arrived, and closes the streams that reached end of file (and the socket of a workload whose streams both
    /// did: it has exited).
    private func collectOutput(from candidates: [WorkloadProcess]? = nil, timeoutMilliseconds: Int32) throws {
        var fds: [pollfd] = []
        var owners: [(WorkloadProcess, Bool)] = []  // (workload, isStdout)
        for w in candidates ?? workloads {
            if w.stdoutPipe >= 0 {
                fds.append(pollfd(fd: w.stdoutPipe, events: Int16(POLLIN), revents: 0))
                owners.append((w, true))
            }
            if w.stderrPipe >= 0 {
                fds.append(pollfd(fd: w.stderrPipe, events: Int16(POLLIN), revents: 0))
                owners.append((w, false))
            }
        }
        guard !fds.isEmpty else { return }
        let ready = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
        if ready < 0 && errno != EINTR {
            throw SimulationError("poll: \(SystemCallError.reason(errno))")
        }
        guard ready > 0 else { return }
        for (i, entry) in fds.enumerated() where entry.revents != 0 {
            let (w, isStdout) = owners[i]
            let n = read(entry.fd, &readBuffer, readBuffer.count)
            if n > 0 {
                if isStdout { w.stdoutBytes += readBuffer[0..<n] } else { w.stderrBytes += readBuffer[0..<n] }
            } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                if isStdout { w.closeStdout() } else { w.closeStderr() }
                if w.stdoutPipe < 0 && w.stderrPipe < 0 { w.closeControl() }
            }
        }
    }

    // MARK: Helpers

    private func removePlans() {
        guard let planDirectory else { return }
        for w in workloads { unlink(planDirectory + "/plan-\(w.virtualPid)") }
        rmdir(planDirectory)
        self.planDirectory = nil
    }

    private static func lines(_ bytes: [UInt8]) -> [String] {
        bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).map {
            String(decoding: $0, as: UTF8.self)
        }
    }

    private static func write(_ text: String, to path: String) throws(SimulationError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SimulationError("cannot write \(path): \(SystemCallError.reason(errno))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in retryingOnInterrupt { Glibc.write(fd, raw.baseAddress! + done, raw.count - done) } }
            guard n > 0 else { throw SimulationError("cannot write \(path): \(SystemCallError.reason(errno))") }
            done += n
        }
    }

    static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `$LP_WORKLOAD`, else `lp-workload` in the directory of the running executable (the build directory for
    /// `swift run` and for the test bundle).
    static func defaultWorkloadPath() -> String? {
        if let env = getenv("LP_WORKLOAD") { return String(cString: env) }
        guard let exe = executablePath(), let slash = exe.lastIndex(of: "/") else { return nil }
        return String(exe[..<slash]) + "/lp-workload"
    }
}
