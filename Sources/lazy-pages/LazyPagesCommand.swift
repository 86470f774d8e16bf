import ArgumentParser

@main
struct LazyPages: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pages",
        abstract: "Tools around the lazy-pages userfaultfd monitor.",
        subcommands: [RestoreSim.self])
}
