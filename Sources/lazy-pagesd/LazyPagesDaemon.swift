import ArgumentParser
import CRIUCommandLine
import Foundation
import LazyPagesCRIU
import LinuxSupport

/// `lazy-pagesd`: the userfaultfd post-copy monitor.
@main
struct LazyPagesDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pagesd",
        abstract: "A userfaultfd post-copy monitor: serves the memory of lazily restored processes.",
        discussion: """
            Without a subcommand it behaves like `criu lazy-pages`: listen on lazy-pages.socket in the work \
            directory, take the uffds of `criu restore --lazy-pages`, serve every page from the image directory, \
            exit 0 when every process has all its pages.
            """,
        subcommands: [CRIULazyPages.self, FirecrackerCommand.self, ServeCommand.self, AdoptCommand.self],
        defaultSubcommand: CRIULazyPages.self)

    /// The arguments for swift-argument-parser: `firecracker` and `serve` as given; everything else is a
    /// `criu lazy-pages` command line (the action word optional and anywhere, as in CRIU, CRIU's configuration files
    /// read) rewritten by ``CRIUCommandLine``.
    static func normalizedArguments(
        _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> [String] {
        let own: [String?] = [FirecrackerCommand.configuration.commandName, ServeCommand.configuration.commandName,
                              AdoptCommand.configuration.commandName]
        // swift-argument-parser's own tool options (help, the man-page plugin's dump, completion scripts) describe
        // the whole command, not the default subcommand.
        let parserTools = ["help", "--help", "-h", "--experimental-dump-help"]
        if let first = arguments.first,
           own.contains(first) || parserTools.contains(first) || first.hasPrefix("--generate-completion-script") {
            return arguments
        }
        do {
            return try CRIUCommandLine(arguments, for: .lazyPages, environment: environment).arguments
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// The arguments as parsed (after ``normalizedArguments``): a successor daemon parses the same ones again.
    nonisolated(unsafe) static var parsedArguments: [String] = []

    static func main() async {
        // A peer that hangs up must never kill the daemon; writes report EPIPE instead.
        signal(SIGPIPE, SIG_IGN)
        // A uffd per restored task and forked child: take every descriptor the hard limit allows.
        DescriptorLimit.raise()
        do {
            let arguments = try normalizedArguments(Array(CommandLine.arguments.dropFirst()))
            parsedArguments = arguments
            var command = try parseAsRoot(arguments)
            // `serve` runs a ServiceGroup (async); the other modes are synchronous and run on this thread as ever.
            if var service = command as? AsyncParsableCommand {
                if service is ServeCommand {
                    ServeCommand.blockShutdownSignals()
                    ServeCommand.takePassedDescriptors()
                }
                try await service.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
