import ArgumentParser
import CRIUCommandLine
import Foundation
import LazyPagesControl
import LazyPagesService
import Logging
import ServiceLifecycle
import SystemdSupport

/// `lazy-pagesd serve`: the long-running service for every restore on the host, driven over its control socket.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve many restores (CRIU and Firecracker jobs) added through a control socket (`lazy-pages add`).",
        discussion: """
            The control socket comes from systemd (socket activation, LISTEN_FDS) when there is one, else it is \
            bound at --control-socket with mode 0660. SIGTERM or SIGINT shuts down gracefully: no new jobs, \
            running restores get --shutdown-timeout seconds to finish, the rest are cancelled. Under systemd with \
            --fd-store-max N (and FileDescriptorStoreMax=N in the unit), every job's (CRIU or Firecracker) uffds, sockets, journal \
            and record are kept in the service's file-descriptor store: a daemon that crashes or is killed is \
            restarted by systemd (Restart=on-failure) and continues its jobs under the same ids; without it, a \
            daemon that dies has its jobs' processes ended by their guardians. The protocol is in \
            docs/control-protocol.md; who may connect where, and what to configure, in docs/security.md.
            """)

    @Option(name: .customLong("control-socket"), help: "Where to bind the control socket.")
    var controlSocket = ControlProtocol.defaultSocketPath

    @Option(name: .customLong("socket-group"), help: "Give the control socket this group (name or gid): its members may connect.")
    var socketGroup: String?

    @Option(name: .customLong("metrics-address"),
            help: "Serve Prometheus metrics at [HOST:]PORT (GET /metrics; HOST defaults to 127.0.0.1, loopback only); off by default.")
    var metricsAddress: String?

    @Flag(name: .customLong("metrics-per-job"),
          help: "Also export per-job series (every user's job ids and progress, to whoever reaches the metrics port); by default only totals.")
    var metricsPerJob = false

    @Option(name: .customLong("allow-page-server"),
            help: "Let jobs fetch pages from this page server: HOST (any port) or HOST:PORT, as jobs spell it ([V6]:PORT); repeatable. None by default: jobs with a pageServer are refused.")
    var allowPageServer: [String] = []

    @Option(name: .customLong("job-socket-peers"),
            help: "Who may connect to a job's socket besides its owner: owner-or-root (default) or owner.")
    var jobSocketPeers = "owner-or-root"

    @Option(name: .customLong("max-connections"), help: "Control connections open at once (waits not counted).")
    var maxConnections = 256

    @Option(name: .customLong("max-connections-per-uid"),
            help: "Control connections one non-root uid may have open at once (waits not counted).")
    var maxConnectionsPerUID = 16

    @Option(name: .customLong("max-waits-per-uid"), help: "`wait` requests one non-root uid may have in progress at once.")
    var maxWaitsPerUID = 64

    @Option(name: .customLong("idle-timeout"),
            help: "Seconds a control connection may send nothing (outside a wait) before it is closed.")
    var idleTimeout = 60

    @Option(name: .customLong("shutdown-timeout"), help: "Seconds running restores get to finish after SIGTERM.")
    var shutdownTimeout: Double = 60

    @Option(name: .customLong("max-jobs-per-uid"), help: "Jobs one uid may have running at once.")
    var maxJobsPerUID = 64

    @Option(name: .customLong("max-uffds-per-job"), help: "Processes (uffds) one job may track, forked children included.")
    var maxUffdsPerJob = 16_384

    @Option(name: .customLong("reply-timeout"),
            help: "Seconds a reply may wait for its client to read it before the client is disconnected.")
    var replyTimeout = 10

    @Option(name: .customLong("fd-store-max"),
            help: "Keep every job's descriptors in systemd's file-descriptor store, at most this many (the unit's FileDescriptorStoreMax=), so that a restarted daemon continues the jobs; 0 (the default) turns it off.")
    var fdStoreMax = 0

    @Option(name: [.customShort("o"), .customLong("log-file")], help: "Write the log to this file instead of stderr.")
    var logFile: String?

    @Flag(name: .customShort("v"), help: "More verbose logging (info by default; -v debug, -vv trace).")
    var verbose: Int

    func validate() throws {
        guard fdStoreMax >= 0 else { throw ValidationError("--fd-store-max must be 0 or more") }
        guard shutdownTimeout >= 0 else { throw ValidationError("--shutdown-timeout must be 0 or more") }
        guard maxJobsPerUID >= 1 else { throw ValidationError("--max-jobs-per-uid must be at least 1") }
        guard maxUffdsPerJob >= 1 else { throw ValidationError("--max-uffds-per-job must be at least 1") }
        guard (1...3600).contains(replyTimeout) else { throw ValidationError("--reply-timeout must be 1...3600 seconds") }
        if let metricsAddress { _ = try Self.parseAddress(metricsAddress) }
        _ = try allowedPageServers()
        guard ["owner-or-root", "owner"].contains(jobSocketPeers) else {
            throw ValidationError("--job-socket-peers takes owner-or-root or owner, got \"\(jobSocketPeers)\"")
        }
        guard maxConnections >= 1, maxConnectionsPerUID >= 1, maxWaitsPerUID >= 1 else {
            throw ValidationError("--max-connections, --max-connections-per-uid and --max-waits-per-uid must be at least 1")
        }
        guard (1...86400).contains(idleTimeout) else { throw ValidationError("--idle-timeout must be 1...86400 seconds") }
    }

    /// `[HOST:]PORT`; the host defaults to loopback.
    static func parseAddress(_ text: String) throws -> (String, UInt16) {
        if let port = UInt16(text) { return ("127.0.0.1", port) }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw ValidationError("--metrics-address takes [HOST:]PORT (e.g. 9464 or 127.0.0.1:9464), got \"\(text)\"")
        }
        let host = String(text[..<colon])
        return (host.isEmpty ? "127.0.0.1" : host, port)
    }

    func allowedPageServers() throws -> [PageServerAllowance] {
        try allowPageServer.map { text in
            guard let allowance = PageServerAllowance(parsing: text) else {
                throw ValidationError("--allow-page-server takes HOST or HOST:PORT ([V6]:PORT), got \"\(text)\"")
            }
            return allowance
        }
    }

    static func groupID(_ text: String) throws -> gid_t {
        if let gid = gid_t(text) { return gid }
        guard let entry = getgrnam(text) else { throw ValidationError("--socket-group: no group \"\(text)\"") }
        return entry.pointee.gr_gid
    }

    /// ServiceGroup takes SIGTERM and SIGINT through a signalfd (libdispatch's signal source on Linux), which sees a
    /// signal only if no thread takes it first: `main` blocks both on the main thread before any other thread starts
    /// (`run` itself already runs on Swift's thread pool), so that every thread inherits the mask.
    static func blockShutdownSignals() {
        var shutdownSignals = sigset_t()
        sigemptyset(&shutdownSignals)
        sigaddset(&shutdownSignals, SIGTERM)
        sigaddset(&shutdownSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &shutdownSignals, nil)
    }

    /// What systemd passed, taken by `takePassedDescriptors` before any other thread ran.
    struct Passed {
        var sockets: [SocketActivation.Socket] = []
        var placed: [(name: String, descriptor: Int32)] = []
        var unplaced: Set<String> = []
        var activationError: SocketActivation.Error?
    }
    nonisolated(unsafe) static var passed = Passed()

    /// What systemd passed (the control socket, and what the descriptor store kept of a predecessor's jobs), the
    /// jobs' descriptors put back at their old numbers. `main` calls it on the main thread before anything else
    /// opens a descriptor: Swift's thread pool opens its own (an epoll, an eventfd, a timerfd) when its first thread
    /// starts, at the lowest free numbers, which with more descriptors passed than the predecessor had are numbers
    /// the predecessor's jobs used (such a job could not be continued).
    static func takePassedDescriptors() {
        var result = Passed()
        var sockets: [SocketActivation.Socket] = []
        do { sockets = try SocketActivation.sockets() } catch { result.activationError = error }
        (result.placed, result.unplaced) = LazyPagesService.placeStoredDescriptors(
            sockets.filter { LazyPagesService.isStoredJobName($0.name) }.map { (name: $0.name, descriptor: $0.descriptor) })
        result.sockets = sockets.filter { !LazyPagesService.isStoredJobName($0.name) }
        passed = result
    }

    func run() async throws {
        let (sockets, placed, unplaced, activationError) = (
            Self.passed.sockets, Self.passed.placed, Self.passed.unplaced, Self.passed.activationError)
        try bootstrapLogging(level: criuLogLevel(3 + verbose), file: logFile)
        let logger = Logger(label: "lazy-pagesd")
        var options = LazyPagesService.Options()
        options.controlSocketPath = controlSocket
        options.limits.activeJobsPerUID = maxJobsPerUID
        options.limits.uffdsPerJob = maxUffdsPerJob
        options.limits.replyTimeoutSeconds = replyTimeout
        options.limits.connections = maxConnections
        options.limits.connectionsPerUID = maxConnectionsPerUID
        options.limits.waitsPerUID = maxWaitsPerUID
        options.limits.idleTimeoutSeconds = idleTimeout
        options.policy.allowedPageServers = try allowedPageServers()
        options.policy.allowRootPeers = jobSocketPeers == "owner-or-root"
        options.metricsPerJob = metricsPerJob
        if let socketGroup { options.socketGroup = try Self.groupID(socketGroup) }
        if let metricsAddress {
            let (host, port) = try Self.parseAddress(metricsAddress)
            options.metricsHost = host
            options.metricsPort = port
        }
        let notifier = SystemdNotifier()
        options.statusChanged = { notifier.status($0) }
        options.descriptorStore = FileDescriptorStore(capacity: fdStoreMax)
        if fdStoreMax > 0, options.descriptorStore == nil {
            logger.warning("--fd-store-max is set but NOTIFY_SOCKET is not (not started by systemd as Type=notify): jobs are not kept across a restart")
        }
        options.storedDescriptors = placed
        options.unplacedJobs = unplaced
        let service: LazyPagesService
        do {
            if let activationError { throw activationError }
            if let socket = sockets.first(where: { $0.name == "control" }) ?? sockets.first {
                options.activatedSocket = socket.descriptor
            }
            service = try LazyPagesService(options: options, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger, command: "lazy-pagesd serve")
            throw ExitCode.failure
        }
        let serve = ServeService(
            service, shutdownTimeout: shutdownTimeout, logger: logger,
            started: { service in
                var status = "serving on \(service.controlSocketDescription)"
                if service.adoptedJobs > 0 { status += "; \(service.adoptedJobs) jobs taken over after a restart" }
                if let port = service.metricsPort, let host = service.options.metricsHost {
                    status += "; metrics on \(host):\(port)"
                }
                notifier.ready(status: status)
            },
            stopping: { service in notifier.stopping(status: "shutting down: \(service.statusLine)") })
        // No maximumGracefulShutdownDuration: the service bounds its own shutdown (--shutdown-timeout, then cancel).
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: serve, serviceName: "serve")], gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }
}
