import LazyPagesFirecracker
import LinuxSupport
import LazyPagesCRIU
import LazyPagesEngine
import Logging

/// The one assembly of a Firecracker snapshot restore (UFFD memory backend), for `lazy-pagesd firecracker` and for a
/// `lazy-pagesd serve` job alike: the session over the memory file and, unless the VM is to be left running on a
/// fatal error, a guardian that ends the VM should the daemon die before the VM exits (Firecracker keeps its uffd
/// open: a fault nobody answers hangs the VM forever).
public final class FirecrackerRestore: @unchecked Sendable {
    public struct Options: Sendable {
        public var socketPath: String
        public var memoryFile: String
        /// Who may connect to `socketPath` (created by the filesystem identity of the thread that makes this restore)
        /// and its mode (see `UnixListener`).
        public var socketAccess = SocketAccess()
        public var engine = EngineConfiguration()
        /// Kill the VM when the restore fails, is cancelled, or its daemon dies while the VM runs (Firecracker's
        /// guidance). Off: the VM is left running, and no guardian is started.
        public var killVMOnFailure = true

        public init(socketPath: String, memoryFile: String) {
            self.socketPath = socketPath
            self.memoryFile = memoryFile
        }
    }

    public let options: Options
    public let session: FirecrackerSession
    public var guardian: GuardianLink? { session.guardian }
    private let logger: Logger

    /// Validates the engine configuration, maps the memory file and listens.
    public init(options: Options, logger: Logger) throws {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        session = try FirecrackerSession(
            socketPath: options.socketPath, memoryFile: options.memoryFile, configuration: options.engine,
            socketAccess: options.socketAccess, logger: logger)
        session.killPeerOnFailure = options.killVMOnFailure
    }

    public var socketPath: String { session.listener.path }
    public var statistics: RestoreStatistics { session.statistics }

    /// Starts the guardian (when the VM is to be killed on failure and it has not started yet).
    public func startGuardian() throws {
        if options.killVMOnFailure { try session.startGuardian(logger: logger) }
    }

    /// Asks the restore to stop; safe from any thread. A VM already connected is killed.
    public func cancel(reason: String) { session.engine.cancel(reason: reason) }

    /// Runs the restore on the calling thread until it ends (the VM exits, or the restore fails or is cancelled).
    public func run() -> RestoreReport {
        do {
            try startGuardian()
        } catch {
            session.listener.close()
            return .guardianDidNotStart(error, statistics: statistics)
        }
        let outcome = session.run()
        var report = RestoreReport(outcome: outcome, summary: RestoreSummary(statistics: statistics).line)
        var killedByGuardian = false
        if let guardian {
            // A VM connected but not killed by the session (its handshake not read yet) may have sent its uffd: the
            // guardian ends it too.
            killedByGuardian = guardian.finish(clean: outcome == .completed) == GuardianLink.killedExitStatus
        }
        if session.killedPeer || killedByGuardian {
            report.processesEnded = "the VM (pid \(session.peer?.pid ?? 0)) was killed so that it does not hang on "
                + "faults nobody serves"
        }
        return report
    }
}
