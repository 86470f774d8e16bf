import ArgumentParser
import LazyPagesControl

/// `lazy-pages add criu|firecracker`: create a job in `lazy-pagesd serve`.
struct AddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a restore job to `lazy-pagesd serve`; prints the job id.",
        subcommands: [AddCRIUCommand.self, AddFirecrackerCommand.self])
}

/// Options of every job.
struct JobOptions: ParsableArguments {
    @Option(name: .customLong("fault-around"), help: "Pages delivered per fault, the faulting one first.")
    var faultAround: Int?

    @Option(name: .customLong("fill-chunk"), help: "Pages per background copy.")
    var fillChunk: Int?

    @Flag(name: .customLong("no-background"), help: "Serve faults only; never copy pages in the background.")
    var noBackground = false

    @Option(name: .customLong("name"), help: "A name shown by `list`.")
    var name: String?

    @Flag(name: .customLong("group-access"),
          help: "Let members of your primary group connect to the job's socket (mode 0660); by default only you and root may (0600).")
    var groupAccess = false

    var specOptions: JobSpec.Options {
        JobSpec.Options(backgroundFill: noBackground ? false : nil, faultAround: faultAround, fillChunk: fillChunk,
                        name: name, socketGroupAccess: groupAccess ? true : nil)
    }
}
