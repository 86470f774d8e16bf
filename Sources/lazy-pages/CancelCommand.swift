import ArgumentParser
import LazyPagesControl

/// `lazy-pages cancel ID`: stop a job; its running processes are ended.
struct CancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel a job: its restore stops, and its running processes are killed.",
        discussion: """
            A job not yet handed a uffd is simply dropped. A job whose processes are running has them killed \
            (SIGKILL: the restored CRIU process tree, or the Firecracker VM) before its uffds are closed: their \
            memory is incomplete, and none may run on with wrong memory. The reply's reason says which.
            """)

    @OptionGroup var control: ControlOptions

    @Argument(help: "The job.")
    var id: String

    func run() throws {
        let reply = try control.send(ControlRequest(op: .cancel, id: id))
        if control.json { control.printJSON(reply) } else if let job = reply.job { print(job.line) }
    }
}
