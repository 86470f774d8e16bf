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
        /// Record the restore in a journal holding these bytes (the front end's description of how to serve it
        /// again: `lazy-pagesd` stores its own command line), so that a successor daemon can continue it
        /// (`RestoreJournal`). nil: no journal.
        public var journalDescription: [UInt8]?
        /// With a journal and a guardian: on the daemon's death the guardian starts a successor daemon that
        /// continues the restore (`lazy-pagesd adopt`), instead of ending its processes. Off (`--no-handover`):
        /// the processes are ended as without a journal.
        public var handover = true

        public init(imagesDirectory: String) { self.imagesDirectory = imagesDirectory }

        /// A dying daemon's restore is handed over only with a guardian to start the successor.
        var handsOver: Bool { handover && guardian }

        /// The page-server client of `pages` (nil for local pages), not connected yet.
        func pageServerClient(logger: Logger) -> PageServerClient? {
            switch pages {
            case .local: nil
            case .pageServer(let server): PageServerClient(options: server, logger: logger)
            }
        }
    }

    public let options: Options
    public let session: LazyPagesSession
    public var guardian: GuardianLink? { session.guardian }
    private let client: PageServerClient?
    private let logger: Logger
    /// The restore's journal, if it keeps one.
    public let journal: RestoreJournal?
    /// For a successor: what `RestoreEngine.adopt` rebuilt (resumed in `run()`), and the predecessor guardian's
    /// ready pipe (told once this daemon's guardian answers for the restore).
    private var adoption: Adoption?
    private var readyPipe: Int32?

    /// Validates the engine configuration, listens, reads the images and connects to the page server. The guardian
    /// starts with `startGuardian()` (or at the latest in `run()`), so that a daemon that detaches first can start
    /// it from the process that serves the restore.
    public init(options: Options, logger: Logger) throws {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        client = options.pageServerClient(logger: logger)
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
        journal = try RestoreJournal.forNewRestore(options.journalDescription, handsOver: options.handsOver)
        if let journal {
            session.attach(journal: journal)
            session.handover = options.handsOver
        }
    }

    /// A successor daemon's restore: rebuilds the restore `journal` records (inherited with the uffds, the
    /// listener and the restorer connection from the guardian of the daemon that died) over the same images and
    /// page source (`options`, as the predecessor had them). Throws `RestoreJournal.AdoptionRefusal` (or the page
    /// source's error) when it cannot vouch for the restore: the caller must then exit with
    /// `GuardianLink.successorRefusedExitStatus`, and the waiting guardian ends the processes. `readyPipe`: told (through this
    /// daemon's guardian) once `run()` answers for the restore (-1: nobody waits, as for a `lazy-pagesd serve` job
    /// taken back from systemd's descriptor store). `verifyDescriptorTable`: see `RestoreEngine.adopt` (off in a
    /// service, whose table holds many restores' uffds).
    public init(adopting journal: RestoreJournal, options: Options, readyPipe: Int32, verifyDescriptorTable: Bool = true,
                logger: Logger) throws
    {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        self.journal = journal
        self.readyPipe = readyPipe
        client = options.pageServerClient(logger: logger)
        do {
            let source = try CRIUImageSource(directory: options.imagesDirectory,
                                             lazyPages: client != nil ? .pageServer : .images)
            if let word = try journal.completeInterruptedWordRead() {
                logger.notice("the predecessor died holding a word of the restorer's: recorded it", metadata: [
                    "word": "\(word)",
                ])
            }
            let adoption = try RestoreEngine.adopt(
                journal: journal, configuration: options.engine, logger: logger, remotePages: client,
                verifyDescriptorTable: verifyDescriptorTable, allowUnknownUffds: 1
            ) { pid in try source.addressSpace(forTask: pid) }
            let directory = options.workDirectory ?? options.imagesDirectory
            session = try adoption.completing {
                try LazyPagesSession(
                    adopting: adoption, source: source,
                    socketPath: (directory.hasSuffix("/") ? directory : directory + "/") + LazyPagesSession.socketName,
                    socketAccess: options.socketAccess, logger: logger)
            }
            session.handover = options.handsOver
            self.adoption = adoption
        } catch {
            _ = client?.close()
            throw error
        }
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
        if let adoption {
            // This daemon answers for the restore from here on: the predecessor's guardian may let go.
            if let readyPipe {
                if let guardian { guardian.adopted(readyPipe: readyPipe) } else { GuardianLink.tellReady(readyPipe) }
                self.readyPipe = nil
            }
            session.engine.resume(after: adoption)
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
