import ArgumentParser

/// The `lazy-pages` command-line tool. Each subcommand lives in its own file; add new ones to `subcommands`.
@main
struct LazyPages: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pages",
        abstract: "Tools around lazy-pagesd, the userfaultfd post-copy monitor.",
        subcommands: [
            Probe.self,
            RestoreSim.self,
            Demo.self,
            Bench.self,
            PageServerCommand.self,
            WriteImages.self,
            AddCommand.self,
            ListCommand.self,
            StatusCommand.self,
            WaitCommand.self,
            CancelCommand.self,
        ])
}
