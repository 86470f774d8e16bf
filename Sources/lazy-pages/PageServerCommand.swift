import ArgumentParser
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
            straight from the pages files. Runs until killed (SIGINT/SIGTERM).
            """)

    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Directory of the CRIU images.")
    var imagesDirectory: String = "."

    @Option(name: .customLong("address"), help: "Address to listen on (default: every address).")
    var address: String?

    @Option(name: .customLong("port"), help: "TCP port to listen on (0: any; the port is logged).")
    var port: UInt16 = 0

    @Flag(name: .customShort("v"), help: "More verbose logging (repeat).")
    var verbose: Int

    func run() throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose >= 2 ? .trace : (verbose == 1 ? .debug : .info)
            return handler
        }
        let logger = Logger(label: "lazy-pages page-server")
        let server: PageServer
        do {
            server = try PageServer(directory: imagesDirectory, host: address, port: port, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("lazy-pages page-server: \(error)\n".utf8))
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(Data("page-server: listening on port \(server.port)\n".utf8))
        signal(SIGPIPE, SIG_IGN)
        server.start()
        // Park the main thread until a signal ends the process.
        while true { pause() }
    }
}
