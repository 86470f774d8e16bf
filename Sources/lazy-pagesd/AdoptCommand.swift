import ArgumentParser
import Foundation
import LazyPagesEngine
import LazyPagesService
import Logging

/// `lazy-pagesd adopt`: the successor daemon the guardian starts when a daemon dies mid-restore (internal; not for
/// operators). It inherits the restore's uffds, listener and restorer (or VM) connection and its journal, rebuilds the
/// restore from the journal with the predecessor's own command line (stored in the journal: `lazy-pages` for a CRIU
/// restore, `firecracker` for a VM), tells the waiting
/// guardian once its own guardian answers for the restore, and serves it to the end. A journal that cannot vouch
/// for the restore is refused: exit `LP_SUCCESSOR_EXIT_REFUSED` (75), and the waiting guardian ends the processes.
struct AdoptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adopt",
        abstract: "Continue a restore whose daemon died (started by the guardian; internal).",
        shouldDisplay: false)

    @Option(help: "The restore journal's descriptor (inherited).")
    var journal: Int32

    @Option(help: "The write end of the waiting guardian's ready pipe (inherited).")
    var ready: Int32

    func run() throws {
        _ = fcntl(ready, F_SETFD, FD_CLOEXEC)
        // Fault injection (tests) stops the daemon it was set for, never its successor: the guardian starts this
        // one with the dead daemon's environment.
        for variable in ["LP_FAULT_STOP_BEFORE_RECORDING_EVENT", "LP_FAULT_STOP_AFTER_ACCEPT", "LP_FAULT_STOP_AFTER_TAKING_WORD"] {
            unsetenv(variable)
        }
        let record: RestoreJournal
        let description: HandoverDescription
        var serveJob = false
        do {
            record = try RestoreJournal(adopting: journal)
            // A `lazy-pagesd serve` job: systemd's descriptor store keeps it for the restarted service.
            serveJob = ServeJobDescription.isServeJob(record.sourceDescription)
            description = serveJob ? HandoverDescription(directory: "/", arguments: [])
                : try HandoverDescription(decoding: record.sourceDescription)
        } catch {
            let word = (error as? RestoreJournal.AdoptionRefusal)?.reasonWord ?? "not-a-journal"
            printError("lazy-pagesd adopt: refused the restore (\(word)): \(error)")
            throw ExitCode(GuardianLink.successorRefusedExitStatus)
        }
        if serveJob { return try ServeJobHandover.leaveToTheServiceManager(journal: record, readyPipe: ready) }
        let parsed = FileManager.default.changeCurrentDirectoryPath(description.directory)
            ? try? LazyPagesDaemon.parseAsRoot(description.arguments) : nil
        if let command = parsed as? CRIULazyPages {
            try command.runAdopted(journal: record, readyPipe: ready)
        } else if let command = parsed as? FirecrackerCommand {
            try command.runAdopted(journal: record, readyPipe: ready)
        } else {
            printError("lazy-pagesd adopt: refused the restore (source): cannot parse the predecessor's command line "
                       + "\(description.arguments) in \(description.directory)")
            throw ExitCode(GuardianLink.successorRefusedExitStatus)
        }
    }
}

extension AdoptCommand {
    /// Builds a successor's restore with `build`, for either front end: a refusal (the journal cannot vouch, the
    /// source cannot be rebuilt) is logged and ends this process with `GuardianLink.successorRefusedExitStatus`, so
    /// the waiting guardian ends the processes; otherwise says the restore goes on.
    static func continueRestore<Restore>(
        journal: RestoreJournal, logger: Logger, _ build: () throws -> Restore
    ) throws -> Restore {
        let restore: Restore
        do {
            restore = try build()
        } catch {
            let word = (error as? RestoreJournal.AdoptionRefusal)?.reasonWord ?? "source"
            logger.critical("refusing to continue the restore: \(error)")
            printError("lazy-pagesd adopt: refused the restore (\(word)): \(error)")
            throw ExitCode(GuardianLink.successorRefusedExitStatus)
        }
        logger.notice("continuing the restore of a daemon that died", metadata: [
            "handovers": "\(journal.handovers)", "pid": "\(getpid())",
        ])
        return restore
    }
}

/// What a successor needs to serve a standalone restore again: the predecessor's working directory and its command
/// line (as parsed, CRIU's configuration files already merged), stored as JSON in the journal.
struct HandoverDescription: Codable {
    var directory: String
    var arguments: [String]

    init(directory: String, arguments: [String]) {
        self.directory = directory
        self.arguments = arguments
    }

    init(decoding bytes: [UInt8]) throws { self = try JSONDecoder().decode(Self.self, from: Data(bytes)) }

    func encoded() throws -> [UInt8] { Array(try JSONEncoder().encode(self)) }
}
