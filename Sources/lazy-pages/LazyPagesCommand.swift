import ArgumentParser
import CRIUCommandLine
import Foundation

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

    /// `page-server` takes a `criu page-server` command line (CRIU's spellings and configuration files), rewritten
    /// by ``CRIUCommandLine``; every other subcommand its arguments as given.
    static func normalizedArguments(
        _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> [String] {
        guard arguments.first == PageServerCommand.configuration.commandName else { return arguments }
        do {
            return try CRIUCommandLine(Array(arguments.dropFirst()), for: .pageServer, environment: environment).arguments
        } catch {
            throw ValidationError(error.message)
        }
    }

    static func main() {
        do {
            var command = try parseAsRoot(normalizedArguments(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
