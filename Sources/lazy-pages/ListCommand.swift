import ArgumentParser
import LazyPagesControl

/// `lazy-pages list`: the jobs the caller may see (all of them for root).
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the jobs of `lazy-pagesd serve`.")

    @OptionGroup var control: ControlOptions

    func run() throws {
        let reply = try control.send(ControlRequest(op: .list))
        if control.json { return control.printJSON(reply) }
        let jobs = reply.jobs ?? []
        if jobs.isEmpty { return print("no jobs") }
        print(JobInfo.header)
        for job in jobs { print(job.line) }
    }
}
