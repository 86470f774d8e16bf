import ArgumentParser
import LazyPagesControl

/// `lazy-pages cancel ID`: stop a job (its restore fails; a Firecracker VM is killed).
struct CancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel a job: its restore stops (a Firecracker VM is killed).")

    @OptionGroup var control: ControlOptions

    @Argument(help: "The job.")
    var id: String

    func run() throws {
        let reply = try control.send(ControlRequest(op: .cancel, id: id))
        if control.json { control.printJSON(reply) } else if let job = reply.job { print(job.line) }
    }
}
