import ArgumentParser
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesFirecracker
import Logging
import SystemdSupport

/// `lazy-pagesd firecracker`: the UFFD page-fault handler for one Firecracker snapshot restore.
struct FirecrackerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firecracker",
        abstract: "Serve one Firecracker snapshot restore (mem_backend \"Uffd\") from its guest memory file.",
        discussion: """
            Listen on --socket (give the same path to Firecracker's PUT /snapshot/load as the backend_path), take \
            Firecracker's guest memory mappings and uffd, and serve every page fault from --mem-file. Balloon \
            removals read zeros. Exit 0 when the VM exits. \
            On a fatal error the VM is killed rather than left hanging on faults nobody serves.
            """)

    @Option(name: .customLong("socket"), help: "The unix socket path Firecracker connects to.")
    var socket: String

    @Option(name: .customLong("mem-file"), help: "The snapshot's guest memory file.")
    var memoryFile: String

    @Flag(name: .customLong("background-fill"),
          help: "Also copy every remaining page in the background (default: serve faults only, like Firecracker's own handler).")
    var backgroundFill = false

    @Flag(name: .customLong("no-kill"), help: "On a fatal error, leave the VM running instead of killing it.")
    var noKill = false

    @Option(name: .customLong("fault-around"), help: "4 KiB pages delivered per fault, the faulting one first (at least one page of the guest's page size).")
    var faultAround = 16

    @Option(name: [.customShort("o"), .customLong("log-file")], help: "Write the log to this file instead of stderr.")
    var logFile: String?

    @Flag(name: .customShort("v"), help: "More verbose logging (repeat: -vv debug, -vvv trace).")
    var verbose: Int

    @Option(name: .customLong("status-fd"), help: "Write one byte to this descriptor (then close it) once listening.")
    var statusFD: Int32?

    func validate() throws {
        guard faultAround >= 1 else { throw ValidationError("--fault-around must be at least 1") }
    }

    func run() throws {
        try bootstrapLogging(level: criuLogLevel(3 + verbose), file: logFile)
        let logger = Logger(label: "lazy-pagesd")
        var configuration = EngineConfiguration()
        configuration.backgroundFill = backgroundFill
        configuration.faultAroundPages = faultAround

        let session: FirecrackerSession
        do {
            session = try FirecrackerSession(
                socketPath: socket, memoryFile: memoryFile, configuration: configuration, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger)
            throw ExitCode.failure
        }
        session.killPeerOnFailure = !noKill
        if let statusFD {
            var ready: UInt8 = 0
            _ = write(statusFD, &ready, 1)
            close(statusFD)
        }
        // Run as a Type=notify unit (one per VM), systemd learns when Firecracker may be started.
        let notifier = SystemdNotifier()
        notifier.ready(status: "waiting for Firecracker on \(socket)")
        let outcome = session.run()
        notifier.stopping(status: "\(outcome)")
        let summary = RestoreSummary(statistics: session.statistics).line
        switch outcome {
        case .completed:
            logger.info("\(summary)")
            print(summary)
        case .cancelled(let reason), .failed(let reason):
            printError("lazy-pagesd: restore failed: \(reason)"
                + (session.killedPeer ? " (killed the VM, pid \(session.peer?.pid ?? 0))" : "") + "\n\(summary)")
            throw ExitCode.failure
        }
    }
}
