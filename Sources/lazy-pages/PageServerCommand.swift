import ArgumentParser
import CRIUCommandLine
import Foundation
import Logging
import PageServer

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
            options that mean nothing here are accepted and logged at debug level.
            """,
        version: lazyPagesVersion)

    @OptionGroup(title: "CRIU's options")
    var criu: CRIUDaemonOptions

    @Option(name: .customLong("address"), help: "Address to listen on (default: every address).")
    var address: String?

    @Option(name: .customLong("port"), help: "TCP port to listen on (0: any; the port is printed and logged).")
    var port: UInt16 = 0

    func run() throws {
        try criu.bootstrapLog(label: "lazy-pages page-server")
        let logger = Logger(label: "lazy-pages page-server")
        let server: PageServer
        do {
            server = try PageServer(directory: criu.imagesDirectory, host: address, port: port, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger, command: "lazy-pages page-server")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(Data("page-server: listening on port \(server.port)\n".utf8))
        signal(SIGPIPE, SIG_IGN)
        // As `criu page-server -d`: listening first, then into the background (before any thread is started).
        let detached = criu.daemon ? try detach() : nil
        if let pidFile = criu.pidPath {
            try "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        }
        server.start()
        if let statusFD = criu.statusFD { signalReady(on: statusFD) }
        detached?()
        // Park the main thread until a signal ends the process.
        while true { pause() }
    }
}
