import ArgumentParser
import CRIUCommandLine
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesService
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
            On a fatal error the VM is killed rather than left hanging on faults nobody serves. If this daemon dies \
            mid-restore, its guardian starts a successor that continues the restore from its journal (the VM only \
            waits), or kills the VM where the journal cannot vouch for its memory (--no-handover: always).
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

    @Flag(name: .customLong("no-handover"),
          help: "If this daemon dies mid-restore, let the guardian kill the VM (as before hand-over existed) instead of starting a successor daemon that continues the restore.")
    var noHandover = false

    @Option(name: .customLong("fault-around"), help: "4 KiB pages delivered per fault, the faulting one first (at least one page of the guest's page size).")
    var faultAround = 16

    @Option(name: [.customShort("o"), .customLong("log-file")], help: "Write the log to this file instead of stderr.")
    var logFile: String?

    @Flag(name: .customShort("v"), help: "More verbose logging (repeat: -vv debug, -vvv trace).")
    var verbose: Int

    @Option(name: .customLong("status-fd"), help: "Write one byte to this descriptor (then close it) once listening.")
    var statusFD: Int32?

    func validate() throws {
        do { try engineConfiguration.validate() } catch { throw ValidationError(error.message(naming: "--\(error.setting.rawValue)")) }
    }

    func run() throws {
        try bootstrapLogging(level: criuLogLevel(3 + verbose), file: logFile)
        let logger = Logger(label: "lazy-pagesd")
        var options = restoreOptions
        if !noHandover && !noKill {
            // How a successor serves this restore again: this command line, from this directory.
            let description = HandoverDescription(
                directory: FileManager.default.currentDirectoryPath, arguments: LazyPagesDaemon.parsedArguments)
            options.journalDescription = try description.encoded()
        }
        let restore: FirecrackerRestore
        do {
            restore = try FirecrackerRestore(options: options, logger: logger)
            try restore.startGuardian()
        } catch {
            reportFatal("\(error)", logger: logger)
            throw ExitCode.failure
        }
        if let statusFD {
            var ready: UInt8 = 0
            _ = write(statusFD, &ready, 1)
            close(statusFD)
        }
        // Run as a Type=notify unit (one per VM), systemd learns when Firecracker may be started.
        let notifier = SystemdNotifier()
        notifier.ready(status: "waiting for Firecracker on \(socket)")
        let report = restore.run()
        notifier.stopping(status: "\(report.outcome)")
        try finish(report, restore: restore, logger: logger)
    }

    /// A successor daemon (`lazy-pagesd adopt`, started by the guardian of a daemon that died): continues the
    /// restore `journal` records, with this (the predecessor's) command line. Exits `LP_SUCCESSOR_EXIT_REFUSED`
    /// when it cannot vouch for the restore (the waiting guardian then kills the VM).
    func runAdopted(journal: RestoreJournal, readyPipe: Int32) throws {
        try bootstrapLogging(level: criuLogLevel(3 + verbose), file: logFile)
        let logger = Logger(label: "lazy-pagesd")
        let restore = try AdoptCommand.continueRestore(journal: journal, logger: logger) {
            try FirecrackerRestore(adopting: journal, options: restoreOptions, readyPipe: readyPipe, logger: logger)
        }
        try finish(restore.run(), restore: restore, logger: logger)
    }

    /// The restore's options from the command line (no journal yet).
    var restoreOptions: FirecrackerRestore.Options {
        var options = FirecrackerRestore.Options(socketPath: socket, memoryFile: memoryFile)
        options.engine = engineConfiguration
        options.killVMOnFailure = !noKill
        options.handover = !noHandover
        return options
    }

    /// Reports how the restore ended and exits accordingly.
    private func finish(_ report: RestoreReport, restore: FirecrackerRestore, logger: Logger) throws {
        switch report.outcome {
        case .completed:
            logger.info("\(report.summary)")
            print(report.summary)
        case .cancelled(let reason), .failed(let reason):
            printError("lazy-pagesd: restore failed: \(reason)"
                + (report.processesEnded != nil ? " (killed the VM, pid \(restore.session.peer?.pid ?? 0))" : "")
                + "\n\(report.summary)")
            throw ExitCode.failure
        }
    }

    /// The engine settings the flags ask for (checked by the engine's one rule in `validate()`).
    var engineConfiguration: EngineConfiguration {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = backgroundFill
        configuration.faultAroundPages = faultAround
        return configuration
    }
}
