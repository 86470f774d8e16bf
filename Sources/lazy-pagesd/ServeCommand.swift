import ArgumentParser
import Foundation
import LazyPagesControl
import LazyPagesService
import Logging
import SystemdSupport

/// `lazy-pagesd serve`: the long-running service for every restore on the host, driven over its control socket.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve many restores (CRIU and Firecracker jobs) added through a control socket (`lazy-pages add`).",
        discussion: """
            The control socket comes from systemd (socket activation, LISTEN_FDS) when there is one, else it is \
            bound at --control-socket with mode 0660. SIGTERM or SIGINT shuts down gracefully: no new jobs, \
            running restores get --shutdown-timeout seconds to finish, the rest are cancelled. The protocol is in \
            docs/control-protocol.md.
            """)

    @Option(name: .customLong("control-socket"), help: "Where to bind the control socket.")
    var controlSocket = ControlProtocol.defaultSocketPath

    @Option(name: .customLong("socket-group"), help: "Give the control socket this group (name or gid): its members may connect.")
    var socketGroup: String?

    @Option(name: .customLong("metrics-address"), help: "Serve Prometheus metrics at HOST:PORT (GET /metrics); off by default.")
    var metricsAddress: String?

    @Option(name: .customLong("shutdown-timeout"), help: "Seconds running restores get to finish after SIGTERM.")
    var shutdownTimeout: Double = 60

    @Option(name: .customLong("max-jobs-per-uid"), help: "Jobs one uid may have running at once.")
    var maxJobsPerUID = 64

    @Option(name: .customLong("max-uffds-per-job"), help: "Processes (uffds) one job may track, forked children included.")
    var maxUffdsPerJob = 16_384

    @Option(name: .customLong("reply-timeout"),
            help: "Seconds a reply may wait for its client to read it before the client is disconnected.")
    var replyTimeout = 10

    @Option(name: [.customShort("o"), .customLong("log-file")], help: "Write the log to this file instead of stderr.")
    var logFile: String?

    @Flag(name: .customShort("v"), help: "More verbose logging (info by default; -v debug, -vv trace).")
    var verbose: Int

    func validate() throws {
        guard shutdownTimeout >= 0 else { throw ValidationError("--shutdown-timeout must be 0 or more") }
        guard maxJobsPerUID >= 1 else { throw ValidationError("--max-jobs-per-uid must be at least 1") }
        guard maxUffdsPerJob >= 1 else { throw ValidationError("--max-uffds-per-job must be at least 1") }
        guard (1...3600).contains(replyTimeout) else { throw ValidationError("--reply-timeout must be 1...3600 seconds") }
        if let metricsAddress { _ = try Self.parseAddress(metricsAddress) }
    }

    static func parseAddress(_ text: String) throws -> (String, UInt16) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw ValidationError("--metrics-address takes HOST:PORT (e.g. 127.0.0.1:9464), got \"\(text)\"")
        }
        return (String(text[..<colon]), port)
    }

    static func groupID(_ text: String) throws -> gid_t {
        if let gid = gid_t(text) { return gid }
        guard let entry = getgrnam(text) else { throw ValidationError("--socket-group: no group \"\(text)\"") }
        return entry.pointee.gr_gid
    }

    func run() throws {
        try bootstrapLogging(level: criuLogLevel(3 + verbose), file: logFile)
        let logger = Logger(label: "lazy-pagesd")
        // The signals that shut down are taken by sigwait on this thread: block them before any thread starts.
        var shutdownSignals = sigset_t()
        sigemptyset(&shutdownSignals)
        sigaddset(&shutdownSignals, SIGTERM)
        sigaddset(&shutdownSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &shutdownSignals, nil)

        var options = LazyPagesService.Options()
        options.controlSocketPath = controlSocket
        options.limits.activeJobsPerUID = maxJobsPerUID
        options.limits.uffdsPerJob = maxUffdsPerJob
        options.limits.replyTimeoutSeconds = replyTimeout
        if let socketGroup { options.socketGroup = try Self.groupID(socketGroup) }
        if let metricsAddress {
            let (host, port) = try Self.parseAddress(metricsAddress)
            options.metricsHost = host
            options.metricsPort = port
        }
        let notifier = SystemdNotifier()
        options.statusChanged = { notifier.status($0) }
        let service: LazyPagesService
        do {
            let activated = try SocketActivation.sockets()
            if let socket = activated.first(where: { $0.name == "control" }) ?? activated.first {
                options.activatedSocket = socket.descriptor
            }
            service = try LazyPagesService(options: options, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger, command: "lazy-pagesd serve")
            throw ExitCode.failure
        }
        service.start()
        var status = "serving on \(service.controlSocketDescription)"
        if let port = service.metricsPort { status += "; metrics on \(options.metricsHost!):\(port)" }
        notifier.ready(status: status)

        var received: Int32 = 0
        while sigwait(&shutdownSignals, &received) != 0 {}
        logger.notice("shutdown requested", metadata: ["signal": "\(received == SIGTERM ? "SIGTERM" : "SIGINT")"])
        notifier.stopping(status: "shutting down: \(service.statusLine)")
        let cancelled = service.shutdown(timeout: shutdownTimeout)
        logger.notice("stopped", metadata: ["cancelled-jobs": "\(cancelled.count)"])
    }
}
