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
        /// Record the restore in a journal holding these bytes (the front end's description of how to serve it
        /// again: `lazy-pagesd` stores its own command line), so that a successor daemon can continue it
        /// (`RestoreJournal`). nil: no journal.
        public var journalDescription: [UInt8]?
        /// With a journal and a guardian: on the daemon's death the guardian starts a successor daemon that
        /// continues the restore (`lazy-pagesd adopt`), instead of killing the VM. Off (`--no-handover`): the VM is
        /// killed as without a journal.
        public var handover = true

        public init(socketPath: String, memoryFile: String) {
            self.socketPath = socketPath
            self.memoryFile = memoryFile
        }

        /// A dying daemon's restore is handed over only with a guardian (which `killVMOnFailure` brings) to start
        /// the successor.
        var handsOver: Bool { handover && killVMOnFailure }
    }

    public let options: Options
    public let session: FirecrackerSession
    public var guardian: GuardianLink? { session.guardian }
    private let logger: Logger
    /// The restore's journal, if it keeps one.
    public let journal: RestoreJournal?
    /// For a successor: what `RestoreEngine.adopt` rebuilt (resumed in `run()`), and the predecessor guardian's
    /// ready pipe (told once this daemon's guardian answers for the restore).
    private var adoption: Adoption?
    private var readyPipe: Int32?

    /// Validates the engine configuration, maps the memory file and listens.
    public init(options: Options, logger: Logger) throws {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        session = try FirecrackerSession(
            socketPath: options.socketPath, memoryFile: options.memoryFile, configuration: options.engine,
            socketAccess: options.socketAccess, logger: logger)
        session.killPeerOnFailure = options.killVMOnFailure
        journal = try RestoreJournal.forNewRestore(options.journalDescription, handsOver: options.handsOver)
        if let journal {
            session.attach(journal: journal)
            session.handover = options.handsOver
        }
    }

    /// A successor daemon's restore: rebuilds the restore `journal` records (inherited with the VM's uffd and its
    /// connection, or the listener, from the guardian of the daemon that died) over the same memory file
    /// (`options`, as the predecessor had them): the guest regions of the handshake and every balloon removal are
    /// replayed, so no page of a removed range is ever filled from the file. Throws
    /// `RestoreJournal.AdoptionRefusal` (or the memory file's error) when it cannot vouch for the restore: the caller
    /// must then exit with `GuardianLink.successorRefusedExitStatus`, and the waiting guardian kills the VM.
    /// `readyPipe`: told (through this daemon's guardian) once `run()` answers for the restore (-1: nobody waits, as
    /// for a `lazy-pagesd serve` job taken back from systemd's descriptor store). `verifyDescriptorTable`: see
    /// `RestoreEngine.adopt` (off in a service, whose table holds many restores' uffds).
    public init(adopting journal: RestoreJournal, options: Options, readyPipe: Int32, verifyDescriptorTable: Bool = true,
                logger: Logger) throws
    {
        try options.engine.validate()
        self.options = options
        self.logger = logger
        self.journal = journal
        self.readyPipe = readyPipe
        let memory = try MappedFile(path: options.memoryFile)
        let adoption = try RestoreEngine.adopt(
            journal: journal, configuration: FirecrackerSession.engineConfiguration(options.engine), logger: logger,
            verifyDescriptorTable: verifyDescriptorTable
        ) { _, frontEnd in
            try FirecrackerSession.addressSpace(journaled: frontEnd, memory: memory)
        }
        session = try adoption.completing {
            try FirecrackerSession(
                adopting: adoption, memory: memory, socketPath: options.socketPath, socketAccess: options.socketAccess,
                logger: logger)
        }
        session.killPeerOnFailure = options.killVMOnFailure
        session.handover = options.handsOver
        self.adoption = adoption
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
        if let adoption {
            // This daemon answers for the restore from here on: the predecessor's guardian may let go.
            if let readyPipe {
                if let guardian { guardian.adopted(readyPipe: readyPipe) } else { GuardianLink.tellReady(readyPipe) }
                self.readyPipe = nil
            }
            session.engine.resume(after: adoption)
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
