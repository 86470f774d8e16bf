import LinuxSupport
import ArgumentParser
import CRIUCommandLine
import Foundation
import Logging
import LazyPagesCRIU
import PageServer
import PageServerCommandLine

/// `lazy-pages page-server`: serve an image directory to lazy-pages daemons over CRIU's page-server protocol.
struct PageServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "page-server",
        abstract: "Serve the pages of a CRIU image directory over CRIU's page-server protocol (like `criu page-server --lazy-pages`).",
        discussion: """
            Answers PS_IOV_GET for the LAZY pages of every task in the images, each page as often as asked, read \
            straight from the pages files. With --lazy-pages (CRIU's command line, as zdtm and CRIU's users start \
            it) it behaves as `criu page-server --lazy-pages`: one session. The first client is the only one (the \
            port is closed once it is accepted), and the server exits when that connection ends: 0 when the client \
            ended it at a request boundary (it closed, after PS_IOV_CLOSE or not, or sent PS_IOV_FORCE_CLOSE), 1 \
            with an error naming the client and the reason when the session broke (a failed TLS handshake or \
            certificate check, an unknown command, a request for pages the images do not hold, a connection lost \
            in the middle of a request, a timeout). Without --lazy-pages it serves any number of clients at once \
            (`criu lazy-pages --page-server` or `lazy-pagesd --page-server`, many restores of one dump) and runs \
            until killed (SIGINT/SIGTERM). --single-session and --no-single-session choose either way explicitly. \
            Takes the options of `criu page-server --lazy-pages` in every spelling CRIU accepts, and CRIU's \
            configuration files; CRIU options that mean nothing here are accepted and logged at debug level. \
            Without --address it listens on loopback (\(PageServer.defaultAddress)) only. To serve other machines, \
            give the address and use --tls with client certificates: the server then requires a certificate from \
            every client, signed by a CA of --tls-cacert, and (unless --tls-no-cn-verify) naming the --address \
            given, as `criu page-server --tls` checks it. Without TLS anyone who can reach the port reads every \
            page of the dump.
            """,
        version: lazyPagesVersion)

    @OptionGroup(title: "CRIU's options")
    var criu: CRIUDaemonOptions

    @Option(name: .customLong("address"),
            help: "Address to listen on (default: \(PageServer.defaultAddress), loopback only; 0.0.0.0 or :: for every address).")
    var address: String?

    @Option(name: .customLong("port"), help: "TCP port to listen on (0: any; the port is printed and logged).")
    var port: UInt16 = 0

    @OptionGroup(title: "TLS")
    var tls: TLSOptionGroup

    @Flag(name: .customLong("lazy-pages"),
          help: "As in `criu page-server --lazy-pages`: serve one session, then exit (unless --no-single-session).")
    var lazyPages = false

    @Flag(name: .customLong("single-session"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: ArgumentHelp(
            "Serve the first client only and exit when its connection ends (exit status 0: it ended cleanly).",
            discussion: "Default: on with --lazy-pages (CRIU's page server does so), off without (many clients, until killed)."))
    var singleSession: Bool?

    /// One session: as asked, else CRIU's behaviour when CRIU's command line (`--lazy-pages`) was given.
    var servesOneSession: Bool { singleSession ?? lazyPages }

    @Option(name: .customLong("ps-socket"),
            help: "Serve this inherited, connected socket as the one session instead of listening (as criu page-server --ps-socket); exit when it ends.")
    var psSocket: Int32?

    @Option(name: .customLong("session-return-timeout"),
            help: ArgumentHelp(
                "Single session: seconds to listen again for a client that went away without closing the session (0: end at once, as criu page-server).",
                discussion: "A lazy-pagesd killed mid-restore is continued by a successor, which connects again: the session goes on."))
    var sessionReturnTimeout = PageServerLimits().sessionReturnTimeout

    @Option(name: .customLong("max-connections"), help: "Clients connected at once at most; more are refused (closed at once).")
    var maxConnections = PageServerLimits().maxConnections

    @Option(name: .customLong("idle-timeout"), help: "Seconds a connection may stay without a request before it is closed (0: forever).")
    var idleTimeout = PageServerLimits().idleTimeout

    @Option(name: .customLong("request-timeout"), help: "Seconds within which a request must arrive in full and its reply be sent (and a TLS handshake be done).")
    var requestTimeout = PageServerLimits().requestTimeout

    func validate() throws {
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard idleTimeout >= 0 else { throw ValidationError("--idle-timeout must be 0 or more") }
        guard requestTimeout > 0 else { throw ValidationError("--request-timeout must be positive") }
        guard sessionReturnTimeout >= 0 else { throw ValidationError("--session-return-timeout must be 0 or more") }
        if let psSocket {
            if let problem = DescriptorCheck.inheritedStreamSocketProblem(psSocket) {
                throw ValidationError("--ps-socket \(psSocket): \(problem)")
            }
        }
    }

    func run() throws {
        endedBySIGTERMAndSIGINT()
        try criu.bootstrapLog(label: "lazy-pages page-server")
        let logger = Logger(label: "lazy-pages page-server")
        // Every connection is a descriptor: the soft limit goes up to the hard one (and the hard one as far as we may).
        let descriptors = DescriptorLimit.raise(wanted: maxConnections + 256)
        if descriptors < maxConnections + 64 {
            logger.warning("the descriptor limit is below the connection cap; beyond it clients are refused", metadata: [
                "RLIMIT_NOFILE": "\(descriptors)", "max-connections": "\(maxConnections)",
            ])
        }
        var limits = PageServerLimits(maxConnections: maxConnections, idleTimeout: idleTimeout, requestTimeout: requestTimeout)
        limits.sessionReturnTimeout = sessionReturnTimeout
        let server: PageServer
        do {
            let credentials = try tls.credentials(logger: logger)
            server = try PageServer(
                directory: criu.imagesDirectory, host: address, port: port, tls: credentials,
                limits: limits,
                singleSession: servesOneSession, inheritedConnection: psSocket, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger, command: "lazy-pages page-server")
            throw ExitCode.failure
        }
        if server.singleSession {
            logger.debug("one session, then exit", metadata: [
                "why": "\(singleSession == nil ? "--lazy-pages, as criu page-server (--no-single-session serves many)" : "--single-session")",
            ])
        }
        if let psSocket {
            FileHandle.standardOutput.write(Data("page-server: serving the inherited socket \(psSocket)\n".utf8))
        } else {
            FileHandle.standardOutput.write(Data("page-server: listening on port \(server.port)\n".utf8))
        }
        signal(SIGPIPE, SIG_IGN)
        // As `criu page-server -d`: listening first, then into the background (before any thread is started).
        let detached = criu.daemon ? try detach() : nil
        if let pidFile = criu.pidPath {
            do {
                try OutputFile.write("\(getpid())\n", to: pidFile)
            } catch {
                reportFatal("cannot write the pid file: \(error)", logger: logger, command: "lazy-pages page-server")
                throw ExitCode.failure
            }
        }
        server.start()
        if let statusFD = criu.statusFD { signalReady(on: statusFD) }
        detached?()
        guard server.singleSession else {
            // Park the main thread until a signal ends the process.
            while true { pause() }
        }
        switch server.waitForSession() {
        case .closed, .stopped:
            return
        case .failed(let reason):
            reportFatal("the session failed: \(reason)", logger: logger, command: "lazy-pages page-server")
            throw ExitCode.failure
        }
    }
}

/// "Runs until killed" must hold whatever the parent left behind: a signal mask and dispositions are inherited across
/// `execve`, and a parent that blocks or ignores SIGTERM (a supervisor taking signals with `sigwait`, a test runner)
/// would otherwise leave a page server — detached with `-d`, so nobody waits for it — that SIGTERM cannot end.
/// Called before any thread is started, so every thread inherits the unblocked mask.
private func endedBySIGTERMAndSIGINT() {
    var set = sigset_t()
    sigemptyset(&set)
    for signo in [SIGTERM, SIGINT, SIGHUP] {
        signal(signo, SIG_DFL)
        sigaddset(&set, signo)
    }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
