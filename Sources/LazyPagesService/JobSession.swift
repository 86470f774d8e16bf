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
}

extension CRIURestore: JobSession {}
extension FirecrackerRestore: JobSession {}

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
    func makeSession(uffdLimit: Int, socketAccess: SocketAccess, logger: Logger) throws -> any JobSession {
        let configuration = engineConfiguration(uffdLimit: uffdLimit)
        switch self {
        case .criu(let job):
            var options = CRIURestore.Options(imagesDirectory: job.imagesDirectory)
            options.workDirectory = job.workDirectory
            options.engine = configuration
            options.socketAccess = socketAccess
            if let server = job.pageServer {
                options.pages = .pageServer(PageServerClientOptions(host: server.address, port: server.port))
            }
            return try CRIURestore(options: options, logger: logger)
        case .firecracker(let job):
            var options = FirecrackerRestore.Options(socketPath: job.socketPath, memoryFile: job.memoryFile)
            options.engine = configuration
            options.socketAccess = socketAccess
            return try FirecrackerRestore(options: options, logger: logger)
        }
    }
}
