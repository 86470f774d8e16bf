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
            Answers PS_IOV_GET for the LAZY pages of every task in the images, to any number of clients at once \
            (`criu lazy-pages --page-server` or `lazy-pagesd --page-server`), each page as often as asked, read \
            straight from the pages files. Runs until killed (SIGINT/SIGTERM). Takes the options of \
            `criu page-server --lazy-pages` in every spelling CRIU accepts, and CRIU's configuration files; CRIU \
            options that mean nothing here are accepted and logged at debug level. \
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
    }

    func run() throws {
        try criu.bootstrapLog(label: "lazy-pages page-server")
        let logger = Logger(label: "lazy-pages page-server")
        // Every connection is a descriptor: the soft limit goes up to the hard one (and the hard one as far as we may).
        let descriptors = DescriptorLimit.raise(wanted: maxConnections + 256)
        if descriptors < maxConnections + 64 {
            logger.warning("the descriptor limit is below the connection cap; beyond it clients are refused", metadata: [
                "RLIMIT_NOFILE": "\(descriptors)", "max-connections": "\(maxConnections)",
            ])
        }
        let server: PageServer
        do {
            let credentials = try tls.credentials(logger: logger)
            server = try PageServer(
                directory: criu.imagesDirectory, host: address, port: port, tls: credentials,
                limits: PageServerLimits(maxConnections: maxConnections, idleTimeout: idleTimeout, requestTimeout: requestTimeout),
                logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger, command: "lazy-pages page-server")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(Data("page-server: listening on port \(server.port)\n".utf8))
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
        // Park the main thread until a signal ends the process.
        while true { pause() }
    }
}
