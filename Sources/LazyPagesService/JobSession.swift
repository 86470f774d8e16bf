import LazyPagesCRIU
import LinuxSupport
import LazyPagesControl
import LazyPagesEngine
import LazyPagesFirecracker
import Logging
import PageServer

/// What a job runs: one front end's session over its own engine.
protocol JobSession: AnyObject, Sendable {
    /// The socket the restorer or the VM connects to.
    var socketPath: String { get }
    var statistics: RestoreStatistics { get }
    /// Runs the restore on the calling thread (the job's dedicated thread) until it ends.
    func run() -> RestoreOutcome
    /// Asks the restore to stop; safe from any thread.
    func cancel(reason: String)
}

/// A CRIU lazy-pages restore (`criu restore --lazy-pages`).
final class CRIUJobSession: JobSession, @unchecked Sendable {
    let session: LazyPagesSession
    let client: PageServerClient?

    init(spec: JobSpec, configuration: EngineConfiguration, socketAccess: SocketAccess, logger: Logger) throws {
        if let server = spec.pageServer {
            client = PageServerClient(options: PageServerClientOptions(host: server.address, port: server.port),
                                      logger: logger)
        } else {
            client = nil
        }
        do {
            session = try LazyPagesSession(
                imagesDirectory: spec.imagesDirectory!, workDirectory: spec.workDirectory,
                configuration: configuration, remotePages: client, socketAccess: socketAccess, logger: logger)
        } catch {
            _ = client?.close()
            throw error
        }
    }

    var socketPath: String { session.listener.path }
    var statistics: RestoreStatistics { session.statistics }

    func run() -> RestoreOutcome {
        let outcome = session.run()
        _ = client?.close()
        // Like `criu lazy-pages` exiting: a failed or cancelled restore lets go of the uffds it still holds, so no
        // process stays blocked forever on a fault nobody will answer (criu restore kills its tree on failure).
        if outcome != .completed { session.engine.closeAll() }
        return outcome
    }

    func cancel(reason: String) { session.engine.cancel(reason: reason) }
}

/// A Firecracker snapshot restore (UFFD memory backend).
final class FirecrackerJobSession: JobSession, @unchecked Sendable {
    let session: FirecrackerSession

    init(spec: JobSpec, configuration: EngineConfiguration, socketAccess: SocketAccess, logger: Logger) throws {
        session = try FirecrackerSession(
            socketPath: spec.socketPath!, memoryFile: spec.memoryFile!, configuration: configuration,
            socketAccess: socketAccess, logger: logger)
    }

    var socketPath: String { session.listener.path }
    var statistics: RestoreStatistics { session.statistics }
    func run() -> RestoreOutcome { session.run() }
    func cancel(reason: String) { session.engine.cancel(reason: reason) }
}
