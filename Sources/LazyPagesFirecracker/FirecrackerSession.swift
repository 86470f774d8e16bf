import Foundation
import LinuxSupport
import LazyPagesEngine
import Logging
import Userfaultfd

/// One Firecracker snapshot restore with a UFFD memory backend: listen on the socket Firecracker was told about,
/// take its one handshake (the guest memory mappings as JSON plus its uffd), and serve every guest page from the
/// snapshot memory file, mapped read-only. Balloon removals read zeros from then on.
///
/// Firecracker hangs forever on a fault nobody answers, so when the restore fails (a refused handshake included) or
/// is cancelled while the VM is still running, the session kills it (`SIGKILL` through a pidfd for the peer learned with `SO_PEERCRED`).
/// The restore ends when the VM exits: Firecracker keeps its uffd open, so even with every page home the session
/// goes on answering the faults that follow balloon removals (with zeros).
public final class FirecrackerSession: @unchecked Sendable, GuardedSession {
    /// The largest handshake message accepted.
    public static let maxMessageBytes = 64 << 10

    public let engine: RestoreEngine
    public let memory: MappedFile
    public let listener: UnixListener
    /// Kill the VM when the restore fails or is cancelled while it runs (Firecracker's guidance). On by default.
    public var killPeerOnFailure = true
    private let logger: Logger
    private var connection: Int32 = -1
    /// The connected VM process, once there is one.
    public private(set) var peer: PeerProcess?
    /// The validated mappings, once the handshake is done.
    public private(set) var mappings: [GuestMemoryMapping] = []
    /// Set when `run()` killed the peer.
    public private(set) var killedPeer = false
    /// The guardian of this restore, if one is attached: it ends the VM if this daemon dies mid-restore.
    public private(set) var guardian: GuardianLink?
    private var peerGone = false
    private var handshakeReceived = false

    /// Maps the memory file, then listens on `socketPath` (a stale socket there is replaced; a live one or any other
    /// file is an error). The socket is created with the calling thread's filesystem identity and `socketAccess`
    /// says who may connect (see `UnixListener`): a refused peer never gets to send a handshake.
    public init(
        socketPath: String, memoryFile: String, configuration: EngineConfiguration = EngineConfiguration(),
        socketAccess: SocketAccess = SocketAccess(), logger: Logger
    ) throws {
        self.logger = logger
        memory = try MappedFile(path: memoryFile)
        let url = URL(fileURLWithPath: socketPath)
        // The path is the caller's choice: never replace anything there but a stale socket.
        listener = try UnixListener(directory: url.deletingLastPathComponent().path, name: url.lastPathComponent,
                                    backlog: 1, access: socketAccess, logger: logger)
        engine = try RestoreEngine(configuration: Self.engineConfiguration(configuration), logger: logger)
        try engine.watch(descriptor: listener.descriptor) { [unowned self] in self.acceptFirecracker() }
        logger.info("listening for Firecracker", metadata: [
            "socket": "\(listener.path)", "memory-file": "\(memoryFile)", "bytes": "\(memory.size)",
        ])
    }

    /// The engine settings of a Firecracker restore, from the caller's: the VM keeps its own uffd open, so it is
    /// served (balloon removals, late faults) until it exits, never retired when its pages are home.
    public static func engineConfiguration(_ configuration: EngineConfiguration) -> EngineConfiguration {
        var configuration = configuration
        configuration.retireCompletedProcesses = false
        return configuration
    }

    /// Continues a restore whose daemon died (`lazy-pagesd adopt`): `adoption` is the engine `RestoreEngine.adopt`
    /// rebuilt from the journal (the guest regions replayed with every balloon removal), `memory` the memory file
    /// mapped again from the same path (refused unless it is the same file). The listener or the VM's connection the
    /// journal names is taken over (`socketPath` is where the listener was bound). Call `engine.resume(after:)` once
    /// the guardian is attached, then `run()`. Throws `RestoreJournal.AdoptionRefusal` when the journal cannot vouch.
    public init(adopting adoption: Adoption, memory: MappedFile, socketPath: String,
                socketAccess: SocketAccess = SocketAccess(), logger: Logger) throws
    {
        self.logger = logger
        self.memory = memory
        engine = adoption.engine
        let state = try FirecrackerJournalState(adoption.frontEnd)
        mappings = try state.validated(against: memory)
        var takenPeer: PeerProcess?
        if let (fd, pid) = state.connection {
            guard fcntl(fd, F_GETFD) >= 0 else {
                throw RestoreJournal.AdoptionRefusal.source("the VM's connection (descriptor \(fd)) is not open")
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let vm = try PeerProcess(socket: fd)
            guard vm.pid == pid else {
                throw RestoreJournal.AdoptionRefusal.source("the VM's connection is from pid \(vm.pid), not \(pid)")
            }
            connection = fd
            takenPeer = vm
            handshakeReceived = !mappings.isEmpty
        }
        if let fd = state.listener, takenPeer == nil {
            listener = try UnixListener(adopting: fd, path: socketPath, access: socketAccess, logger: logger)
        } else if let fd = state.listener {
            // The VM had connected and the listener was about to be closed: whether the guardian still passed it on
            // does not matter (if it did, it is closed below, its socket file removed).
            listener = (try? UnixListener(adopting: fd, path: socketPath, access: socketAccess, logger: logger))
                ?? UnixListener(closedAt: socketPath, access: socketAccess)
        } else {
            listener = UnixListener(closedAt: socketPath, access: socketAccess)
        }
        peer = takenPeer
        if let peer {
            // Firecracker connects once: a listener still open here was about to be closed.
            listener.close()
            if !handshakeReceived {
                try engine.watch(descriptor: connection) { [unowned self] in self.receiveHandshake() }
            }
            try engine.watch(descriptor: peer.descriptor) { [unowned self] in self.peerExited() }
        } else if listener.descriptor >= 0 {
            try engine.watch(descriptor: listener.descriptor) { [unowned self] in self.acceptFirecracker() }
        } else {
            throw RestoreJournal.AdoptionRefusal.source("the journal names neither the listener nor the VM's connection")
        }
        logger.info("Firecracker restore taken over", metadata: [
            "listener": "\(state.listener.map(String.init) ?? "closed")",
            "vm": "\(peer.map { String($0.pid) } ?? "not connected")", "regions": "\(mappings.count)",
        ])
    }

    deinit {
        if connection >= 0 { close(connection) }
    }

    public var statistics: RestoreStatistics { engine.statistics }

    /// Whether the guardian may hand this restore over to a successor when the daemon dies (set before
    /// `attach(guardian:)`; needs a journal).
    public var handover = false

    /// Records this restore in `journal` from now on (call before `run`, before the VM connects): the engine's
    /// entries, and the listener, the VM's connection, the memory file and the guest regions for a successor.
    public func attach(journal: RestoreJournal) {
        engine.journal = journal
        if listener.descriptor >= 0 {
            journal.record(.frontEnd(kind: FirecrackerJournalEntry.listener.rawValue, a: Int64(listener.descriptor), b: 0))
        }
        journal.record(.frontEnd(kind: FirecrackerJournalEntry.memoryFile.rawValue, a: Int64(memory.size),
                                 b: Int64(bitPattern: memory.inode)))
    }

    /// Lets `guardian` end the VM should this daemon die before the VM exits — or, with a journal and `handover`,
    /// start a successor that continues the restore (call before `run`).
    public func attach(guardian: GuardianLink) {
        self.guardian = guardian
        guardian.peersAreTasks()
        guardian.access(listener.access, owner: listener.owner)
        if let journal = engine.journal { guardian.journal(journal, handover: handover) }
        if listener.descriptor >= 0 { guardian.listener(descriptor: listener.descriptor) }
        if connection >= 0, let peer { guardian.restorer(pid: peer.pid, connection: connection) }
    }

    /// Runs the restore on the calling thread until it ends; kills a still-running VM if it failed or was cancelled.
    public func run() -> RestoreOutcome {
        defer {
            listener.close()
            closeConnection()
        }
        let outcome = engine.run()
        switch outcome {
        case .completed:
            break
        case .failed(let reason), .cancelled(let reason):
            // Only a peer that sent its handshake waits on us; one that hung up before has nothing to hang on.
            if killPeerOnFailure, handshakeReceived, let peer, peer.isAlive {
                killedPeer = peer.send(SIGKILL)
                logger.error("killed the VM so that it does not hang on faults nobody serves", metadata: [
                    "pid": "\(peer.pid)", "reason": "\(reason)",
                ])
            }
        }
        peer?.close()
        return outcome
    }

    // MARK: The handshake

    private func acceptFirecracker() {
        // Until the connection is recorded: a daemon killed in between leaves a connection nobody knows.
        var marked = engine.journal != nil
        engine.journal?.beginReading()
        defer { if marked { engine.journal?.endReading() } }
        do {
            // A peer that is not the job's owner (or root) is refused and logged there; we go on listening.
            guard let fd = try listener.accept() else { return }
            let vm = peerProcess(of: fd)
            engine.journal?.record(.frontEnd(kind: FirecrackerJournalEntry.connection.rawValue, a: Int64(fd),
                                             b: Int64(vm ?? 0)))
            if marked {
                engine.journal?.endReading()
                marked = false
            }
            if let guardian, let vm { guardian.restorer(pid: vm, connection: fd) }
            guardian?.listener(descriptor: -1)  // closed below: its number may be reused
            engine.journal?.record(.frontEnd(kind: FirecrackerJournalEntry.listenerClosed.rawValue,
                                             a: Int64(listener.descriptor), b: 0))
            // Firecracker connects once; nobody else has anything to say on this socket.
            engine.unwatch(descriptor: listener.descriptor)
            listener.close()
            connection = fd
            let peer = try PeerProcess(socket: fd)
            self.peer = peer
            try engine.watch(descriptor: fd) { [unowned self] in self.receiveHandshake() }
            try engine.watch(descriptor: peer.descriptor) { [unowned self] in self.peerExited() }
            logger.info("Firecracker connected", metadata: ["pid": "\(peer.pid)", "uid": "\(peer.uid)"])
        } catch {
            engine.fail("accepting Firecracker's connection failed: \(error)")
        }
    }

    private func receiveHandshake() {
        // From the read until the regions and the uffd are recorded (or the restore is marked failed): a daemon killed
        // in between took a handshake nobody can read again, and its successor must refuse (the VM is killed).
        engine.journal?.beginReading()
        defer { engine.journal?.endReading() }
        do {
            try takeHandshake()
        } catch {
            engine.fail("\(error)")
        }
    }

    private func takeHandshake() throws(HandshakeError) {
        let received: DescriptorPassing.Received
        do {
            received = try DescriptorPassing.receive(
                socket: connection, maxBytes: Self.maxMessageBytes, maxDescriptors: 4)
        } catch {
            if error.errno == EAGAIN { return }
            throw HandshakeError(.socket, "\(error)")
        }
        // Nothing else ever comes on this socket: stop listening to it whatever the message holds. It is closed only
        // when the restore ends, after a refused peer has been killed, so the peer never runs on after a refusal.
        engine.unwatch(descriptor: connection)
        var descriptors = received.descriptors
        defer { descriptors.forEach { close($0) } }
        handshakeReceived = !received.bytes.isEmpty
        guard handshakeReceived else {
            throw HandshakeError(.hungUp, "Firecracker closed the socket without sending its guest memory mappings")
        }
        guard !received.truncated else {
            throw HandshakeError(
                .tooLarge, "the handshake carries more than \(Self.maxMessageBytes) bytes or more than 4 descriptors")
        }
        guard descriptors.count == 1 else {
            throw descriptors.isEmpty
                ? HandshakeError(.noDescriptor, "no userfaultfd came with the mappings (expected one SCM_RIGHTS descriptor)")
                : HandshakeError(.tooManyDescriptors, "expected one descriptor (the uffd), got \(descriptors.count)")
        }
        let fd = descriptors[0]
        guard DescriptorCheck.isUserfaultfd(fd) else {
            throw HandshakeError(
                .notUserfaultfd, "the descriptor sent is \(DescriptorCheck.kernelName(of: fd) ?? "unknown"), "
                    + "not \(DescriptorCheck.userfaultfdLink)")
        }
        let mappings = try GuestMemoryMapping.validate(
            GuestMemoryMapping.decodeList(received.bytes), fileSize: UInt64(memory.size))
        descriptors.removeAll()
        let uffd = Userfaultfd(adopting: fd)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.mappings = mappings
        let pageSize = Int(mappings[0].pageSize)
        if let journal = engine.journal { GuestMemoryMapping.journalEntries(mappings).forEach(journal.record) }
        do {
            try engine.addTask(imagePid: peer?.pid ?? 0, uffd: uffd,
                               space: GuestMemoryMapping.addressSpace(mappings, memory: memory))
        } catch {
            throw HandshakeError(.socket, "cannot watch the uffd: \(error)")
        }
        // There is no further announcement in this protocol: the one VM is the whole restore.
        engine.allTasksAnnounced()
        if peerGone, let peer { engine.tasksExited(detail: "VM process \(peer.pid) exited") }
        logger.info("guest memory received", metadata: [
            "regions": "\(mappings.count)", "page-size": "\(pageSize)",
            "bytes": "\(mappings.reduce(0) { $0 + $1.size })",
        ])
    }

    private func peerExited() {
        guard let peer else { return }
        engine.unwatch(descriptor: peer.descriptor)
        peerGone = true
        logger.info("the VM process exited", metadata: ["pid": "\(peer.pid)"])
        // Before the handshake, the socket still says what happens (a queued message, or end of file).
        if !mappings.isEmpty { engine.tasksExited(detail: "VM process \(peer.pid) exited") }
    }

    private func closeConnection() {
        if connection >= 0 {
            engine.unwatch(descriptor: connection)
            close(connection)
            connection = -1
        }
    }
}
