import ArgumentParser
import CRIUCommandLine
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesService
import LinuxSupport
import Logging
import PageServer
import PageServerCommandLine

/// The drop-in for `criu lazy-pages`, with CRIU's own option spellings for the local case.
struct CRIULazyPages: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pages",
        abstract: "Serve one `criu restore --lazy-pages` from a CRIU image directory (like `criu lazy-pages`).",
        discussion: """
            Takes every option of `criu lazy-pages`, in every spelling CRIU accepts, and CRIU's configuration files \
            (/etc/criu/default.conf, ~/.criu/default.conf, $CRIU_CONFIG_FILE, --config FILE; --no-default-config). \
            CRIU options that mean nothing here are accepted and logged at debug level.
            """,
        version: lazyPagesVersion)

    @OptionGroup(title: "CRIU's options")
    var criu: CRIUDaemonOptions

    @Option(name: .customLong("fault-around"), help: "Pages delivered per fault, the faulting one first.")
    var faultAround = 1

    @Option(name: .customLong("fill-chunk"), help: "Pages per background copy after a fault.")
    var fillChunk = 64

    @Option(name: .customLong("fill-chunk-max"),
            help: "Pages a background copy grows to while no fault comes (doubling per copy; reset by a fault).")
    var fillChunkMax = EngineConfiguration().fillChunkMaxPages

    @Option(name: .customLong("spin-after-fault"),
            help: "Microseconds the loop polls instead of sleeping after serving a fault (0: always sleep).")
    var spinAfterFault = EngineConfiguration().spinAfterFaultMicroseconds

    @Option(name: .customLong("remote-requests-per-step"),
            help: "With --page-server: background requests one fill step sends together at most (1: one per step).")
    var remoteRequestsPerStep = EngineConfiguration().remoteRequestsPerStep

    @Flag(name: .customLong("no-background"), help: "Serve faults only; never copy pages in the background.")
    var noBackground = false

    @Flag(name: .customLong("early-fill"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: "Start the background fill of each task as soon as its uffd arrives, before the restore has finished (local pages; --no-early-fill waits for the restore to finish, as criu lazy-pages does).")
    var earlyFill = EngineConfiguration().fillBeforeAllTasksAnnounced

    @Flag(name: .customLong("populate-source"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: "Map the pages files into the daemon's page tables on a second thread as soon as they are opened (MADV_POPULATE_READ; reads ahead what is not cached).")
    var populateSource = EngineConfiguration().populateSource

    @Option(name: .customLong("record-profile"),
            help: "When the restore completes, write the order in which it faulted pages to this file (a working-set profile for --prefetch-profile).")
    var recordProfile: String?

    @Option(name: .customLong("prefetch-profile"),
            help: "Deliver the pages of this working-set profile (written by --record-profile on an earlier restore of the same images) first.")
    var prefetchProfile: String?

    @Flag(name: .customLong("page-server"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: "Fetch every LAZY page from a page server (`criu page-server --lazy-pages`, `criu dump --lazy-pages --port`, or `lazy-pages page-server`), even where the images directory holds data for it; the pages files are not opened.")
    var pageServer = false

    @Option(name: .customLong("address"), help: "The page server's address (with --page-server).")
    var address: String?

    @Option(name: .customLong("port"), help: "The page server's TCP port (with --page-server).")
    var port: UInt16?

    @Option(name: .customLong("ps-socket"),
            help: ArgumentHelp(
                "With --page-server: talk to the page server over this inherited, connected socket instead of connecting to --address and --port (as criu lazy-pages --ps-socket).",
                discussion: "It cannot be opened again: a connection that fails ends the restore (every page still missing poisoned), and a daemon that dies mid-restore is not continued by a successor."))
    var psSocket: Int32?

    @Option(name: .customLong("retries"), help: "Reconnect attempts after the page-server connection fails, before the restore fails.")
    var retries = 5

    @Option(name: .customLong("retry-delay"), help: "Seconds before the first reconnect; doubled for each further attempt.")
    var retryDelay = 0.2

    @Option(name: .customLong("stall-timeout"), help: "Seconds without a complete answer from the page server (with requests outstanding) before the connection counts as failed (a stalled or trickling source).")
    var stallTimeout = 10.0

    @OptionGroup(title: "TLS (with --page-server)")
    var tls: TLSOptionGroup

    @Flag(name: .customLong("no-handover"),
          help: "If this daemon dies mid-restore, let the guardian end the restore's processes (as before hand-over existed) instead of starting a successor daemon that continues the restore.")
    var noHandover = false

    @Flag(name: .customLong("no-guardian"),
          help: "Do not start lp-guardian (without it, if this daemon dies mid-restore, the restored processes read zero pages).")
    var noGuardian = false

    /// Whether a successor may continue this restore: not with --no-handover, nor over an inherited connection.
    var handsOver: Bool { !noHandover && psSocket == nil }

    func validate() throws {
        do { try engineConfiguration.validate() } catch { throw ValidationError(error.message(naming: "--\(error.setting.rawValue)")) }
        if pageServer && psSocket == nil {
            guard address != nil else { throw ValidationError("--page-server needs --address (or --ps-socket)") }
            guard port != nil else { throw ValidationError("--page-server needs --port (or --ps-socket)") }
        }
        if let psSocket {
            if let problem = DescriptorCheck.inheritedStreamSocketProblem(psSocket) {
                throw ValidationError("--ps-socket \(psSocket): \(problem)")
            }
        }
        guard retries >= 0 else { throw ValidationError("--retries must be 0 or more") }
        guard retryDelay >= 0 else { throw ValidationError("--retry-delay must be 0 or more") }
        guard stallTimeout > 0 else { throw ValidationError("--stall-timeout must be positive") }
    }

    func run() throws {
        try criu.bootstrapLog(label: "lazy-pagesd")
        let logger = Logger(label: "lazy-pagesd")
        var options = try restoreOptions(logger: logger)
        if psSocket != nil && !noHandover {
            logger.notice("--ps-socket: the page-server connection is inherited and cannot be opened again; a daemon that dies mid-restore is not continued by a successor")
        }
        if handsOver && !noGuardian {
            // How a successor serves this restore again: this command line, from this directory.
            let description = HandoverDescription(
                directory: FileManager.default.currentDirectoryPath, arguments: LazyPagesDaemon.parsedArguments)
            options.journalDescription = try description.encoded()
        }
        let restore: CRIURestore
        do {
            restore = try CRIURestore(options: options, logger: logger)
        } catch {
            reportFatal("\(error)", logger: logger)
            throw ExitCode.failure
        }
        let detached = criu.daemon ? try detach() : nil
        do {
            try restore.startGuardian()  // after detaching: the guardian watches the process that serves
        } catch {
            reportFatal("\(error) (use --no-guardian to run without)", logger: logger)
            throw ExitCode.failure
        }
        try writePidFile(logger: logger)
        if let statusFD = criu.statusFD { signalReady(on: statusFD) }
        detached?()
        try finish(restore.run(), logger: logger)
    }

    /// A successor daemon (`lazy-pagesd adopt`, started by the guardian of a daemon that died): continues the
    /// restore `journal` records, with this (the predecessor's) command line. Exits `LP_SUCCESSOR_EXIT_REFUSED`
    /// when it cannot vouch for the restore (the waiting guardian then ends the processes).
    func runAdopted(journal: RestoreJournal, readyPipe: Int32) throws {
        try criu.bootstrapLog(label: "lazy-pagesd")
        let logger = Logger(label: "lazy-pagesd")
        let restore = try AdoptCommand.continueRestore(journal: journal, logger: logger) {
            var options = try restoreOptions(logger: logger)
            options.prefetchProfile = nil  // delivered or not, every pending page comes again anyway
            options.recordProfile = false
            return try CRIURestore(adopting: journal, options: options, readyPipe: readyPipe, logger: logger)
        }
        try writePidFile(logger: logger)
        try finish(restore.run(), logger: logger)
    }

    private func writePidFile(logger: Logger) throws {
        if let pidFile = criu.pidPath {
            do {
                try OutputFile.write("\(getpid())\n", to: pidFile)
            } catch {
                reportFatal("cannot write the pid file: \(error)", logger: logger)
                throw ExitCode.failure
            }
        }
    }

    /// The restore's options from the command line (the profile read, the page server's TLS credentials loaded).
    func restoreOptions(logger: Logger) throws -> CRIURestore.Options {
        if !pageServer && (address != nil || port != nil) {
            // As in CRIU (a configuration file may set them for `criu dump --page-server`).
            logger.warning("--address and --port are ignored without --page-server")
        }

        var options = CRIURestore.Options(imagesDirectory: criu.imagesDirectory)
        options.workDirectory = criu.resolvedWorkDirectory
        options.engine = engineConfiguration
        options.recordProfile = recordProfile != nil
        options.guardian = !noGuardian
        options.handover = handsOver
        if let prefetchProfile {
            do {
                options.prefetchProfile = try loadProfile(prefetchProfile)
            } catch {
                reportFatal("cannot read the prefetch profile \(prefetchProfile): \(error)", logger: logger)
                throw ExitCode.failure
            }
        }
        if pageServer, psSocket != nil || (address != nil && port != nil) {
            var server = PageServerClientOptions(host: address ?? "", port: port ?? 0)
            server.inheritedSocket = psSocket
            server.retries = retries
            server.retryDelay = retryDelay
            server.stallTimeout = stallTimeout
            do {
                server.tls = try tls.credentials(logger: logger)
            } catch {
                logger.critical("cannot start: \(error)")
                printError("lazy-pagesd: \(error)")
                throw ExitCode.failure
            }
            options.pages = .pageServer(server)
        }
        return options
    }

    /// Reports how the restore ended (summary, profile) and exits accordingly.
    private func finish(_ report: RestoreReport, logger: Logger) throws {
        if let recordProfile, let recorded = report.profile {
            do {
                try recorded.text.write(toFile: recordProfile, atomically: true, encoding: .utf8)
                logger.info("working-set profile written", metadata: [
                    "file": "\(recordProfile)", "pages": "\(recorded.entries.count)",
                ])
            } catch {
                printError("lazy-pagesd: cannot write the profile \(recordProfile): \(error)")
            }
        }
        if report.processesEnded != nil {
            printError("lazy-pagesd: the guardian killed the restore's processes that still waited for pages")
        }
        switch report.outcome {
        case .completed:
            logger.info("\(report.summary)")
            print(report.summary)
        case .cancelled(let reason), .failed(let reason):
            if !loggingToStandardError { logger.error("restore failed: \(reason)") }
            printError("lazy-pagesd: restore failed: \(reason)\n\(report.summary)")
            throw ExitCode.failure
        }
    }

    /// The engine settings the flags ask for (checked by the engine's one rule in `validate()`).
    var engineConfiguration: EngineConfiguration {
        var configuration = EngineConfiguration()
        configuration.faultAroundPages = faultAround
        configuration.fillChunkPages = fillChunk
        configuration.fillChunkMaxPages = fillChunkMax
        configuration.spinAfterFaultMicroseconds = spinAfterFault
        configuration.remoteRequestsPerStep = remoteRequestsPerStep
        configuration.backgroundFill = !noBackground
        configuration.fillBeforeAllTasksAnnounced = earlyFill
        configuration.populateSource = populateSource
        return configuration
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Reads a working-set profile file (bounded in size; the parser names a malformed line).
func loadProfile(_ path: String) throws -> WorkingSetProfile {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
    guard size <= WorkingSetProfile.maxEntries * 32 else {
        throw ValidationError("\(size) bytes, more than a profile of \(WorkingSetProfile.maxEntries) entries can be")
    }
    guard let text = try String(data: Data(contentsOf: URL(fileURLWithPath: path)), encoding: .utf8) else {
        throw ValidationError("not UTF-8 text")
    }
    return try WorkingSetProfile(parsing: text)
}
