import ArgumentParser
import LazyPagesControl

/// `lazy-pages add firecracker --socket PATH --mem-file FILE`: a Firecracker snapshot restore job.
struct AddFirecrackerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firecracker",
        abstract: "Serve one Firecracker snapshot restore (UFFD memory backend) from its memory file.")

    @OptionGroup var control: ControlOptions
    @OptionGroup var job: JobOptions

    @Option(name: .customLong("socket"), help: "The UFFD socket path given to Firecracker (mem_backend.backend_path).")
    var socket: String

    @Option(name: .customLong("mem-file"), help: "The snapshot memory file.")
    var memoryFile: String

    func run() throws {
        let spec = JobSpec.firecracker(.init(
            socketPath: absolutePath(socket), memoryFile: absolutePath(memoryFile), options: job.specOptions))
        let reply = try control.send(ControlRequest(op: .add, job: spec))
        if control.json { control.printJSON(reply) } else { print(reply.job?.id ?? "?") }
    }
}
