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
            if configuration.populateSource { source.populateInBackground() }
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

    /// Continues a restore whose daemon died (`lazy-pagesd adopt`): `adoption` is the engine `RestoreEngine.adopt`
    /// rebuilt over `source`; the listener and the restorer connection the journal names are taken over if they
    /// were still open (`socketPath` is where the listener was bound). Call `engine.resume(after:)` once the
    /// guardian is attached, then `run()`.
    public init(adopting adoption: Adoption, source: CRIUImageSource, socketPath: String,
                socketAccess: SocketAccess = SocketAccess(), logger: Logger) throws
    {
        self.logger = logger
        self.source = source
        engine = adoption.engine
        var listenerFD: Int32?
        var restorerConnection: (fd: Int32, pid: Int32)?
        var awaiting: Int32?
        for entry in adoption.frontEnd {
            switch CRIUJournalEntry(rawValue: entry.kind) {
            case .listener: listenerFD = Int32(truncatingIfNeeded: entry.a)
            case .listenerClosed: listenerFD = nil
            case .connection:
                restorerConnection = (Int32(truncatingIfNeeded: entry.a), Int32(truncatingIfNeeded: entry.b))
            case .connectionClosed: restorerConnection = nil
            case .awaitingDescriptor: awaiting = Int32(truncatingIfNeeded: entry.a)
            case nil: throw LazyPagesError("unknown front-end journal entry \(entry.kind)")
            }
        }
        if let pid = awaiting, adoption.announcedTasks.contains(pid) { awaiting = nil }
        if let listenerFD {
            listener = try UnixListener(adopting: listenerFD, path: socketPath, access: socketAccess, logger: logger)
            try engine.watch(descriptor: listener.descriptor) { [unowned self] in self.acceptRestorer() }
        } else {
            listener = UnixListener(closedAt: socketPath, access: socketAccess)
        }
        var connection: RestorerConnection?
        if let (fd, pid) = restorerConnection {
            guard fcntl(fd, F_GETFD) >= 0 else { throw LazyPagesError("the restorer connection (descriptor \(fd)) is not open") }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let resumed = RestorerConnection(
                resuming: fd, engine: engine, source: source, announced: Set(adoption.announcedTasks),
                awaiting: awaiting, finished: adoption.allTasksAnnounced, logger: logger)
            self.connection = resumed
            connection = resumed
            restorerPid = pid
            try engine.watch(descriptor: fd) { [unowned resumed] in resumed.readable() }
        }
        // The uffd the predecessor received for the awaited pid and died before recording (adopt allowed one).
        if let unknown = adoption.unknownUffds.first {
            guard awaiting != nil, adoption.unknownUffds.count == 1, let resumed = connection else {
                throw RestoreJournal.AdoptionRefusal.unknownUffd(descriptor: unknown)
            }
            _ = fcntl(unknown, F_SETFD, FD_CLOEXEC)
            resumed.claim(unknown)
        }
        logger.info("restore taken over", metadata: [
            "listener": "\(listenerFD.map(String.init) ?? "closed")",
            "connection": "\(restorerConnection.map { String($0.fd) } ?? "closed")",
        ])
    }

    /// The restorer connection's descriptor and peer, while it is open.
    private var restorerPid: Int32?

    public var statistics: RestoreStatistics { engine.statistics }

    /// Records this restore in `journal` from now on (call before `run`, before any restorer connects): the engine's
    /// entries, and the listener and the restorer connection for a successor to take over.
    public func attach(journal: RestoreJournal) {
        engine.journal = journal
        if listener.descriptor >= 0 {
            journal.record(.frontEnd(kind: CRIUJournalEntry.listener.rawValue, a: Int64(listener.descriptor), b: 0))
        }
    }

    /// Hands every uffd of this restore to `guardian` as well (call before `run`).
    public func attach(guardian: GuardianLink) {
        self.guardian = guardian
        engine.observer = guardian
        guardian.access(listener.access, owner: listener.owner)
        if let journal = engine.journal { guardian.journal(journal, handover: handover) }
        if listener.descriptor >= 0 { guardian.listener(descriptor: listener.descriptor) }
        if let connection, let restorerPid { guardian.restorer(pid: restorerPid, connection: connection.descriptor) }
    }

    private static let stopAfterAccept = getenv("LP_FAULT_STOP_AFTER_ACCEPT") != nil

    /// Whether the guardian may hand this restore over to a successor when the daemon dies (set before
    /// `attach(guardian:)`; needs a journal).
    public var handover = false

    private func acceptRestorer() {
        // Until the connection is recorded: a daemon killed in between leaves a connection nobody knows.
        var marked = engine.journal != nil
        engine.journal?.beginReading()
        defer { if marked { engine.journal?.endReading() } }
        do {
            // A peer that is not the restore's owner (or root) is refused and logged there; we go on listening.
            guard let fd = try listener.accept() else { return }
            // Fault injection for the guardian's tests: the daemon stops in the one moment the guardian has not
            // been told about the connection yet (the test then kills it).
            if Self.stopAfterAccept { raise(SIGSTOP) }
            let restorer = peerProcess(of: fd)
            engine.journal?.record(.frontEnd(kind: CRIUJournalEntry.connection.rawValue, a: Int64(fd),
                                             b: Int64(restorer ?? 0)))
            if marked {
                engine.journal?.endReading()
                marked = false
            }
            restorerPid = restorer
            if let guardian, let restorer { guardian.restorer(pid: restorer, connection: fd) }
            guardian?.listener(descriptor: -1)  // closed below: its number may be reused
            engine.journal?.record(.frontEnd(kind: CRIUJournalEntry.listenerClosed.rawValue,
                                             a: Int64(listener.descriptor), b: 0))
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
