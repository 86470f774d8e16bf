import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// One running `lp-workload`: its pid (also its process group), the simulator's end of its fd-3 socket, and the
/// read ends of its stdout and stderr.
final class WorkloadProcess {
    let virtualPid: Int32
    let pid: pid_t
    /// Our end of the socketpair the workload has as fd 3 (its uffd arrives here; "go" is written here).
    private(set) var control: Int32
    private(set) var stdoutPipe: Int32
    private(set) var stderrPipe: Int32
    var stdoutBytes: [UInt8] = []
    var stderrBytes: [UInt8] = []
    private(set) var reaped = false
    private(set) var status: Int32 = 0

    /// Starts `path plan scenario seed` with the socket on fd 3, stdout/stderr on pipes, in its own process group,
    /// with default signal dispositions and an empty signal mask.
    init(virtualPid: Int32, path: String, arguments: [String]) throws(SimulationError) {
        self.virtualPid = virtualPid
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw SimulationError("socketpair: \(SystemCallError.reason(errno))")
        }
        // stdout/stderr travel over socketpairs rather than pipes: they are created close-on-exec atomically, so a
        // workload started concurrently from another thread cannot inherit them and hold them open.
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        let streamCloexec = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, streamCloexec, 0, &out) == 0, socketpair(AF_UNIX, streamCloexec, 0, &err) == 0 else {
            let e = errno
            for fd in pair + out + err where fd >= 0 { close(fd) }
            throw SimulationError("socketpair: \(SystemCallError.reason(e))")
        }
        shutdown(out[0], Int32(SHUT_WR))
        shutdown(err[0], Int32(SHUT_WR))
        // Move the child's ends above 2..3 so the dup2s below cannot clobber each other.
        func high(_ fd: Int32) -> Int32 {
            let moved = fcntl(fd, F_DUPFD_CLOEXEC, 10)
            close(fd)
            return moved
        }
        let childControl = high(pair[1]), childOut = high(out[1]), childErr = high(err[1])
        defer {
            close(childControl)
            close(childOut)
            close(childErr)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, childOut, 1)
        posix_spawn_file_actions_adddup2(&actions, childErr, 2)
        posix_spawn_file_actions_adddup2(&actions, childControl, 3)

        let attributes = SpawnAttributes(processGroup: 0)

        let argv = ([path] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = (argv + [nil]).withUnsafeBufferPointer { argvBuffer in
            posix_spawn(&child, path, &actions, &attributes.value, argvBuffer.baseAddress!, environ)
        }
        guard rc == 0 else {
            for fd in [pair[0], out[0], err[0]] { close(fd) }
            throw SimulationError("cannot start \(path): \(SystemCallError.reason(rc))")
        }
        pid = child
        control = pair[0]
        stdoutPipe = out[0]
        stderrPipe = err[0]
    }

    deinit {
        if !reaped {
            kill(-pid, SIGKILL)
            _ = reap()
        }
        for fd in [control, stdoutPipe, stderrPipe] where fd >= 0 { close(fd) }
    }

    /// Waits for the uffd the workload sends over fd 3 (one byte + `SCM_RIGHTS`), at most `timeout`.
    func receiveDescriptor(timeout: Duration) throws(SimulationError) -> Int32 {
        let seconds = timeout.components.seconds
        var limit = timeval(tv_sec: Int(max(seconds, 1)), tv_usec: 0)
        setsockopt(control, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let received: DescriptorPassing.Received
        do {
            received = try DescriptorPassing.receive(socket: control, maxBytes: 1, maxDescriptors: 1)
        } catch {
            throw SimulationError("task \(virtualPid): no uffd from lp-workload (pid \(pid)): \(error)")
        }
        guard received.bytes.count == 1, received.descriptors.count == 1, !received.truncated else {
            received.descriptors.forEach { close($0) }
            throw SimulationError(
                "task \(virtualPid): lp-workload (pid \(pid)) sent no uffd"
                    + (received.bytes.isEmpty ? " (it exited)" : ""))
        }
        return received.descriptors[0]
    }

    /// Tells an `idle` workload to start checking (best effort: a workload that is gone does not mind).
    func sendGo() {
        var byte: UInt8 = UInt8(ascii: "g")
        _ = send(control, &byte, 1, Int32(MSG_NOSIGNAL))
    }

    func closeStdout() {
        close(stdoutPipe)
        stdoutPipe = -1
    }

    func closeStderr() {
        close(stderrPipe)
        stderrPipe = -1
    }

    func closeControl() {
        if control >= 0 { close(control) }
        control = -1
    }

    /// Kills the workload and everything it forked (its process group).
    func killGroup() { kill(-pid, SIGKILL) }

    /// Waits for the workload to exit; returns its exit code, or minus the signal that ended it.
    @discardableResult
    func reap() -> Int32 {
        if reaped { return status }
        reaped = true
        status = WaitStatus.wait(for: pid)?.code ?? Int32.min
        return status
    }
}
