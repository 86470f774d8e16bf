import LazyPagesCRIU
import LinuxSupport
import LazyPagesControl
import LazyPagesEngine
import LazyPagesFirecracker
import Logging
import PageServer

/// What a job runs: the same restore assembly the standalone daemon runs (`CRIURestore`, `FirecrackerRestore`),
/// guardian included.
protocol JobSession: AnyObject, Sendable {
    /// The socket the restorer or the VM connects to.
    var socketPath: String { get }
    var statistics: RestoreStatistics { get }
    /// Runs the restore on the calling thread (the job's dedicated thread) until it ends; the processes of a
    /// restore that did not complete have been ended when it returns.
    func run() -> RestoreReport
    /// Asks the restore to stop; safe from any thread.
    func cancel(reason: String)
    /// Starts the restore's guardian (with the daemon's own identity, not the job owner's filesystem identity).
    func startGuardian() throws
    /// The restore's engine (its observer gets the store's `ParkingObserver` beside the guardian).
    var engine: RestoreEngine { get }
    /// The journal a restarted daemon continues the restore from, if the restore keeps one.
    var journal: RestoreJournal? { get }
}

extension CRIURestore: JobSession {
    var engine: RestoreEngine { session.engine }
}
extension FirecrackerRestore: JobSession {
    var engine: RestoreEngine { session.engine }
}

/// The journal description of a serve job (`CRIURestore.Options.journalDescription`): says that the job's
/// descriptors are in the service's descriptor store, so that the guardian's hand-over is answered by
/// `lazy-pagesd adopt` at once ("the service manager keeps them") and the restarted service continues the job.
public enum ServeJobDescription {
    public static let prefix = Array("lazy-pagesd serve job\n".utf8)

    static func encode(jobID: String) -> [UInt8] { prefix + Array(jobID.utf8) }

    /// Whether a journal's description is a serve job's.
    public static func isServeJob(_ description: [UInt8]) -> Bool { description.starts(with: prefix) }

    /// The job id a serve job's description names, or nil for any other description.
    public static func jobID(_ description: [UInt8]) -> String? {
        guard isServeJob(description) else { return nil }
        let id = String(decoding: description.dropFirst(prefix.count), as: UTF8.self)
        return !id.isEmpty && id.allSatisfy(\.isNumber) ? id : nil
    }
}

extension JobSpec {
    /// The engine settings of this job (checked with the engine's one rule, `EngineConfiguration.validate()`).
    func engineConfiguration(uffdLimit: Int) -> EngineConfiguration {
        var configuration = EngineConfiguration()
        configuration.maxTrackedProcesses = uffdLimit
        if let fill = options.backgroundFill { configuration.backgroundFill = fill }
        if let pages = options.faultAround { configuration.faultAroundPages = pages }
        if let pages = options.fillChunk { configuration.fillChunkPages = pages }
        return configuration
    }

    /// The restore this job runs (its guardian is started by the registry). Every job has a guardian: whatever ends
    /// the job — or the daemon — no process of it runs on with wrong memory, and no VM hangs.
    /// `socketAccess` says who may connect to the job's socket (created by the caller's filesystem identity).
    /// `journalDescription`: keep a journal (the service has a descriptor store), holding these bytes.
    func makeSession(uffdLimit: Int, socketAccess: SocketAccess, journalDescription: [UInt8]? = nil, logger: Logger)
        throws -> any JobSession
    {
        let configuration = engineConfiguration(uffdLimit: uffdLimit)
        switch self {
        case .criu(let job):
            var options = criuOptions(job, configuration: configuration, socketAccess: socketAccess)
            options.journalDescription = journalDescription
            options.handover = journalDescription != nil
            return try CRIURestore(options: options, logger: logger)
        case .firecracker(let job):
            var options = firecrackerOptions(job, configuration: configuration, socketAccess: socketAccess)
            options.journalDescription = journalDescription
            options.handover = journalDescription != nil
            return try FirecrackerRestore(options: options, logger: logger)
        }
    }
}

extension JobSpec {
    /// The restore of a job a restarted daemon takes over (`JobAdoption`): rebuilt from its inherited `journal` with
    /// the same images, work directory and page source (CRIU), or the same socket and memory file (Firecracker: the
    /// file is mapped again from its path and refused unless it is the one the journal names, by inode and size), as
    /// when it was added. Runs with the owner's filesystem identity (the caller's); its guardian is started by the
    /// caller. Throws `RestoreJournal.AdoptionRefusal` (or the page source's error) when it cannot be continued.
    func adoptedSession(journal: RestoreJournal, uffdLimit: Int, socketAccess: SocketAccess, logger: Logger) throws
        -> any JobSession
    {
        let configuration = engineConfiguration(uffdLimit: uffdLimit)
        // No journal description (the journal is the inherited one); nobody waits on a ready pipe (-1: the
        // guardian of the dead daemon let go when systemd was to keep the descriptors); the descriptor table holds
        // every job's uffds, so it is not checked against this one journal.
        switch self {
        case .criu(let job):
            var options = criuOptions(job, configuration: configuration, socketAccess: socketAccess)
            options.handover = true
            return try CRIURestore(adopting: journal, options: options, readyPipe: -1, verifyDescriptorTable: false,
                                   logger: logger)
        case .firecracker(let job):
            var options = firecrackerOptions(job, configuration: configuration, socketAccess: socketAccess)
            options.handover = true
            return try FirecrackerRestore(adopting: journal, options: options, readyPipe: -1,
                                          verifyDescriptorTable: false, logger: logger)
        }
    }

    /// A CRIU job's restore options (images, work directory, page source), for a new job and an adopted one alike.
    private func criuOptions(_ job: CRIUJob, configuration: EngineConfiguration, socketAccess: SocketAccess)
        -> CRIURestore.Options
    {
        var options = CRIURestore.Options(imagesDirectory: job.imagesDirectory)
        options.workDirectory = job.workDirectory
        options.engine = configuration
        options.socketAccess = socketAccess
        if let server = job.pageServer {
            options.pages = .pageServer(PageServerClientOptions(host: server.address, port: server.port))
        }
        return options
    }

    /// A Firecracker job's restore options, for a new job and an adopted one alike.
    private func firecrackerOptions(_ job: FirecrackerJob, configuration: EngineConfiguration,
                                    socketAccess: SocketAccess) -> FirecrackerRestore.Options
    {
        var options = FirecrackerRestore.Options(socketPath: job.socketPath, memoryFile: job.memoryFile)
        options.engine = configuration
        options.socketAccess = socketAccess
        return options
    }
}
