import ArgumentParser
import LazyPagesControl

/// `lazy-pages wait ID`: block until the job ended; exit 0 when it completed, 1 when it failed or was cancelled.
struct WaitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait", abstract: "Wait for a job to end: exit 0 when it completed, 1 when it failed or was cancelled.")

    @OptionGroup var control: ControlOptions

    @Argument(help: "The job.")
    var id: String

    @Option(name: .customLong("timeout"), help: "Give up after this many seconds (exit 2).")
    var timeout: Double?

    func run() throws {
        let reply = try control.send(ControlRequest(op: .wait, id: id, timeoutSeconds: timeout), accepting: [.timedOut])
        guard let job = reply.job else { throw ExitCode.failure }
        if control.json { control.printJSON(reply) } else { print(job.line) }
        if reply.code == .timedOut { throw ExitCode(2) }
        if job.state != .completed { throw ExitCode.failure }
    }
}
