import LazyPagesCRIU
import LinuxSupport
import LazyPagesEngine
import Logging
import PageServer

/// The one assembly of a `criu restore --lazy-pages` restore, for the standalone daemon (`lazy-pagesd lazy-pages`)
/// and for a `lazy-pagesd serve` job alike: the session over the images, the page source, the working-set
/// profiles and the guardian. `run()` runs it and says how it ended.
///
/// The safety net is the same in both modes: with a guardian (the default), a restore that ends without every
/// process having all its pages — cancelled, failed, bound reached, source lost — has its processes ended by the
/// guardian *before* any uffd is closed, and a daemon that dies has them ended by the guardian alone. A page source
/// lost for good poisons what it still owed (SIGBUS on touch), never zeros.
public final class CRIURestore: @unchecked Sendable {
    /// Where `LAZY` pages without local data come from.
    public enum PageSource: Sendable {
        /// Every page from the images directory.
        case local
        /// A CRIU page server; its options (address, retries, TLS ...) are passed through whole.
        case pageServer(PageServerClientOptions)
    }

    public struct Options: Sendable {
        public var imagesDirectory: String
        /// Where `lazy-pages.socket` is created (default: the images directory), by the filesystem identity of the
        /// thread that makes this restore.
        public var workDirectory: String?
        /// Who may connect to `lazy-pages.socket` and its mode (see `UnixListener`).
        public var socketAccess = SocketAccess()
        public var engine = EngineConfiguration()
        public var pages = PageSource.local
        /// Deliver the pages of this profile first.
        public var prefetchProfile: WorkingSetProfile?
        /// Record the order in which the restore faults pages (returned in the report when it completes).
        public var recordProfile = false
        /// Start a guardian (see `GuardianLink`). Without one, a daemon that dies mid-restore leaves its processes
        /// on zero pages.
        public var guardian = true

        public init(imagesDirectory: String) { self.imagesDirectory = imagesDirectory }
    }

    public let options: Options
    public let session: LazyPagesSession
    public var guardian: GuardianLink? { session.guardian }
    private let client: PageServerClient?
    private let logger: Logger

    /// Validates the engine configuration, listens, reads the images and connects to the page server. The guardian
    /// starts with `startGuardian()` (or at the latest in `run()`), so that a daemon that detaches first can start
    /// it from the process that serves the restore.
    public init(options: Options, logger: Logger) throws {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        switch options.pages {
        case .local: client = nil
        case .pageServer(let server): client = PageServerClient(options: server, logger: logger)
        }
        do {
            session = try LazyPagesSession(
                imagesDirectory: options.imagesDirectory, workDirectory: options.workDirectory,
                configuration: options.engine, remotePages: client, socketAccess: options.socketAccess,
                logger: logger)
        } catch {
            _ = client?.close()
            throw error
        }
        if let profile = options.prefetchProfile { session.engine.prefetch(profile) }
        if options.recordProfile { session.engine.startRecordingProfile() }
    }

    public var socketPath: String { session.listener.path }
    public var statistics: RestoreStatistics { session.statistics }

    /// Starts the guardian (if the options ask for one and it has not started yet).
    public func startGuardian() throws {
        if options.guardian { try session.startGuardian(logger: logger) }
    }

    /// Asks the restore to stop; safe from any thread. Its processes, if it has any, are ended.
    public func cancel(reason: String) { session.engine.cancel(reason: reason) }

    /// Runs the restore on the calling thread until it ends; the guardian has done its work when this returns.
    public func run() -> RestoreReport {
        do {
            try startGuardian()
        } catch {
            session.listener.close()
            _ = client?.close()
            return .guardianDidNotStart(error, statistics: statistics)
        }
        let outcome = session.run()
        _ = client?.close()
        var report = RestoreReport(outcome: outcome, summary: RestoreSummary(statistics: statistics).line)
        if outcome == .completed, options.recordProfile { report.profile = session.engine.recordedProfile }
        // The engine still holds every uffd: a clean end lets the guardian go; otherwise it ends the restore's
        // processes still waiting for pages first, and only then may the uffds close (when the session goes).
        if let guardian {
            switch guardian.finish(clean: outcome == .completed) {
            case GuardianLink.killedExitStatus:
                report.processesEnded = "the processes of the restore still waiting for pages were killed "
                    + "(they could not get the rest of their memory)"
                logger.warning("the guardian killed the restore's processes that still waited for pages")
            case 0:
                break
            case let status:
                // The guardian is gone: closing the uffds now would hand the processes zero pages. They stay
                // blocked on their faults instead (kill them, or the restorer, to release them).
                session.engine.leaveUffdsOpen()
                logger.critical("the guardian is gone (status \(status)): the restore's uffds stay open so that no process reads zero pages")
            }
        }
        return report
    }
}
