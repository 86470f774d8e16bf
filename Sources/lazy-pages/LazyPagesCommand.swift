import ArgumentParser

/// The `lazy-pages` command-line tool. Each subcommand lives in its own file; add new ones to `subcommands`.
@main
struct LazyPages: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pages",
        abstract: "A userfaultfd post-copy monitor (a drop-in for `criu lazy-pages`).",
        subcommands: [
            Probe.self
        ])
}
