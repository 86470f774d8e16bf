import Foundation
import LazyPagesEngine
import LinuxSupport
import Logging

/// One `criu lazy-pages`-style restore: listen on `lazy-pages.socket` in the work directory, take the restorer's
/// uffds, serve every page from a CRIU image directory, and end when every process has all its pages.
public final class LazyPagesSession: @unchecked Sendable, GuardedSession {
    public static let socketName = "lazy-pages.socket"

    public let engine: RestoreEngine
    public let source: CRIUImageSource
    public let listener: UnixListener
    private let logger: Logger
    private var connection: RestorerConnection?
    /// The guardian of this restore, if one is attached (told the restorer's pid on connect).
    public private(set) var guardian: GuardianLink?

    /// Listens first (so `criu restore` can connect as early as possible), then reads and validates the images.
    /// With `remotePages`, every `LAZY` page comes from that source (a page server, the truth even where the image
    /// directory holds data for the page), which is started (connected) here. The socket is created with the calling
    /// thread's filesystem identity and `socketAccess` says who may connect (see `UnixListener`).
    public init(
        imagesDirectory: String, workDirectory: String? = nil,
        configuration: EngineConfiguration = EngineConfiguration(), remotePages: RemotePageSource? = nil,
        socketAccess: SocketAccess = SocketAccess(), logger: Logger
    ) throws {
        self.logger = logger
        listener = try UnixListener(
            directory: workDirectory ?? imagesDirectory, name: Self.socketName, access: socketAccess,
            replacingStaleFiles: true, logger: logger)
        do {
            source = try CRIUImageSource(directory: imagesDirectory, lazyPages: remotePages != nil ? .pageServer : .images)
            engine = try RestoreEngine(configuration: configuration, logger: logger)
            if let remotePages { try engine.useRemotePages(remotePages) }
        } catch {
            listener.close()
            throw error
        }
        try engine.watch(descriptor: listener.descriptor) { [unowned self] in self.acceptRestorer() }
        logger.info("listening", metadata: [
            "socket": "\(listener.path)", "images": "\(imagesDirectory)", "tasks": "\(source.taskPids)",
            "dead": "\(source.deadTasks.sorted())",
        ])
    }

    public var statistics: RestoreStatistics { engine.statistics }

    /// Hands every uffd of this restore to `guardian` as well (call before `run`).
    public func attach(guardian: GuardianLink) {
        self.guardian = guardian
        engine.observer = guardian
        guardian.listener(descriptor: listener.descriptor)
    }

    private static let stopAfterAccept = getenv("LP_FAULT_STOP_AFTER_ACCEPT") != nil

    private func acceptRestorer() {
        do {
            // A peer that is not the restore's owner (or root) is refused and logged there; we go on listening.
            guard let fd = try listener.accept() else { return }
            // Fault injection for the guardian's tests: the daemon stops in the one moment the guardian has not
            // been told about the connection yet (the test then kills it).
            if Self.stopAfterAccept { raise(SIGSTOP) }
            if let guardian, let restorer = peerProcess(of: fd) { guardian.restorer(pid: restorer, connection: fd) }
            guardian?.listener(descriptor: -1)  // closed below: its number may be reused
            // CRIU's restorer connects once; a second connection has nothing to say to us.
            engine.unwatch(descriptor: listener.descriptor)
            listener.close()
            let connection = RestorerConnection(descriptor: fd, engine: engine, source: source, logger: logger)
            self.connection = connection
            try engine.watch(descriptor: fd) { [unowned connection] in connection.readable() }
            logger.info("restorer connected")
        } catch {
            engine.fail("accepting the restorer failed: \(error)")
        }
    }

    /// Runs the restore on the calling thread until it ends.
    public func run() -> RestoreOutcome {
        defer { listener.close() }
        return engine.run()
    }

    /// The one-line summary `criu lazy-pages` users expect at the end.
    public func summary() -> String {
        RestoreSummary(statistics: statistics).line
    }
}
