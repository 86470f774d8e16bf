import CGuardian
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of the restore guardian (Sources/CGuardian/guardian.c): a child process sharing the daemon's
/// file descriptor table, so every uffd of the restore — including a fork child's, from the moment the daemon reads
/// its event — stays open if the daemon dies. The guardian then kills the restore's processes before letting the
/// uffds go, so no restored process ever runs on with kernel zero pages in place of its memory.
///
/// One link per restore. Install it as the engine's `observer` (it snapshots the process tree whenever a uffd is
/// adopted), report the restorer's pid with `restorer(pid:)`, and call `finish(clean:)` when the restore ends.
public final class GuardianLink: RestoreObserver, @unchecked Sendable {
    public let pid: pid_t
    private var control: Int32
    private let logger: Logger
    private var broken = false

    public init(logger: Logger) throws {
        self.logger = logger
        var control: Int32 = -1
        let child = lp_guardian_start(&control)
        guard child > 0 else {
            throw GuardianStartError(errno: -child)
        }
        pid = child
        self.control = control
        logger.info("guardian started", metadata: ["pid": "\(child)"])
    }

    deinit { if control >= 0 { close(control) } }

    /// The process on the other end of the lazy-pages socket: the restored tasks are its descendants.
    /// `connection` is the accepted socket: uffds still queued in it when the daemon dies count as in flight.
    public func restorer(pid: pid_t, connection: Int32) { send(UInt32(LP_GUARDIAN_RESTORER), pid: pid, fd: connection) }

    /// `finish`'s result when the guardian killed the restore's processes.
    public static let killedExitStatus = Int32(LP_GUARDIAN_EXIT_KILLED)

    /// The exit status of a successor daemon that refused the restore it was handed (the waiting guardian then ends
    /// the processes at once instead of trying another successor).
    public static let successorRefusedExitStatus = Int32(LP_SUCCESSOR_EXIT_REFUSED)

    /// The lazy-pages listening socket: on the daemon's death, connections waiting there (with uffds in flight)
    /// are accepted by the guardian and their restorers' processes killed.
    public func listener(descriptor: Int32) { send(UInt32(LP_GUARDIAN_LISTENER), pid: descriptor) }

    /// The peer of the restore's socket is itself the process waiting on the uffd it sent (Firecracker's VM keeps
    /// its own uffd): from now on the guardian ends the peer itself, not a restorer's descendants.
    public func peersAreTasks() { send(UInt32(LP_GUARDIAN_PEERS_ARE_TASKS)) }

    /// The restore's journal (`RestoreJournal`): the guardian records the processes it knows in it when the daemon
    /// dies, and — with `handover` — starts a successor daemon that continues the restore from it instead of ending
    /// the processes (`lazy-pagesd adopt`, bounded by the journal's `maxHandovers`; the successor refuses, and the
    /// processes are ended as without hand-over, when the journal cannot vouch for the layout). A successor's own
    /// guardian is told the journal the same way: it loads the processes its predecessor knew from it.
    public func journal(_ journal: RestoreJournal, handover: Bool) {
        send(UInt32(LP_GUARDIAN_JOURNAL), pid: handover ? 1 : 0, fd: journal.descriptor)
    }

    /// The listener's access rule: connections the guardian accepts itself on the daemon's death (to learn their
    /// restorers) are checked as the daemon checks its own (`SocketAccess`); a refused peer's is closed.
    public func access(_ rule: SocketAccess, owner: FilesystemIdentity) {
        var flags: Int32 = 0
        if rule.allowRoot { flags |= Int32(LP_GUARDIAN_ACCESS_ROOT) }
        if rule.groupAccess { flags |= Int32(LP_GUARDIAN_ACCESS_GROUP) }
        send(UInt32(LP_GUARDIAN_ACCESS), pid: pid_t(bitPattern: owner.uid), fd: Int32(bitPattern: owner.gid),
             reserved: flags)
    }

    /// For a successor daemon: this guardian now answers for the restore. It closes `readyPipe` (the write end
    /// the predecessor's guardian waits on, inherited by the successor), which lets that guardian go.
    public func adopted(readyPipe: Int32) { send(UInt32(LP_GUARDIAN_ADOPTED), fd: readyPipe) }

    /// What `adopted(readyPipe:)` has the guardian do, for a successor that runs without a guardian of its own
    /// (`--no-guardian`): writes 'A' on the predecessor guardian's ready pipe and closes it.
    public static func tellReady(_ readyPipe: Int32) {
        var yes = UInt8(ascii: "A")
        while write(readyPipe, &yes, 1) < 0 && errno == EINTR {}
        close(readyPipe)
    }

    public func taskAdded(id: Int, imagePid: Int32, uffd: Int32) { send(UInt32(LP_GUARDIAN_SNAPSHOT)) }

    public func processForked(parent: Int, child: Int, uffd: Int32) { send(UInt32(LP_GUARDIAN_SNAPSHOT)) }

    /// Nothing to do: the daemon closing a uffd closes it for the guardian too (one descriptor table).
    public func processRetired(id: Int) {}

    /// Ends the guardian and returns its exit status. `clean`: the restore completed; the guardian just exits (0).
    /// Otherwise it kills every process of the restore while the daemon still holds the uffds, then exits
    /// (`killedExitStatus`; 0 when no uffd was open any more, i.e. nothing depended on the daemon).
    @discardableResult
    public func finish(clean: Bool) -> Int32 {
        send(UInt32(clean ? LP_GUARDIAN_DONE : LP_GUARDIAN_ABORT))
        guard let status = WaitStatus.wait(for: pid) else { return -1 }
        if control >= 0 {
            close(control)
            control = -1
        }
        return status.code
    }

    private func send(_ kind: UInt32, pid: pid_t = 0, fd: Int32 = -1, reserved: Int32 = 0) {
        guard control >= 0, !broken else { return }
        var message = lp_guardian_msg()
        message.kind = kind
        message.pid = pid
        message.fd = fd
        message.reserved = reserved
        let n = withUnsafeBytes(of: &message) { write(control, $0.baseAddress, $0.count) }
        if n != MemoryLayout<lp_guardian_msg>.size {
            broken = true
            logger.error("the guardian is gone: a daemon crash from now on would leave processes on zero pages",
                         metadata: ["guardian": "\(self.pid)", "errno": "\(errno)"])
        }
    }
}

/// The pid of the process on the other end of a unix socket (`SO_PEERCRED`), or nil.
public func peerProcess(of socket: Int32) -> pid_t? {
    guard let peer = PeerCredentials(socket: socket), peer.pid > 0 else { return nil }
    return peer.pid
}

/// A front end's session a guardian watches: it tells the guardian its listener and the peers it accepts.
public protocol GuardedSession: AnyObject {
    /// The attached guardian, if any.
    var guardian: GuardianLink? { get }
    /// Attaches `guardian` (once, before the session runs).
    func attach(guardian: GuardianLink)
}

extension GuardedSession {
    /// Starts a guardian and attaches it, unless one is attached already.
    public func startGuardian(logger: Logger) throws {
        guard guardian == nil else { return }
        attach(guardian: try GuardianLink(logger: logger))
    }
}

/// The guardian could not be started (`lp_guardian_start` failed with `errno`).
public struct GuardianStartError: Error, CustomStringConvertible, Sendable, Equatable {
    public let errno: Int32
    public var description: String { "cannot start the guardian: \(SystemCallError.reason(errno))" }
}
