import ArgumentParser
import Foundation
import LazyPagesCRIU
import LinuxSupport

/// `lazy-pagesd`: the userfaultfd post-copy monitor.
@main
struct LazyPagesDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pagesd",
        abstract: "A userfaultfd post-copy monitor: serves the memory of lazily restored processes.",
        discussion: """
            Without a subcommand it behaves like `criu lazy-pages`: listen on lazy-pages.socket in the work \
            directory, take the uffds of `criu restore --lazy-pages`, serve every page from the image directory, \
            exit 0 when every process has all its pages.
            """,
        subcommands: [CRIULazyPages.self, FirecrackerCommand.self, ServeCommand.self],
        defaultSubcommand: CRIULazyPages.self)

    /// CRIU spells verbosity `-v4` as well as `-vvvv`; ArgumentParser knows only the latter, so rewrite the former.
    static func normalizedArguments(_ arguments: [String]) -> [String] {
        arguments.map { argument in
            if argument.hasPrefix("-v"), argument.count > 2, argument.dropFirst(2).allSatisfy(\.isNumber) {
                return "--log-level=\(argument.dropFirst(2))"
            }
            return argument
        }
    }

    static func main() {
        // A peer that hangs up must never kill the daemon; writes report EPIPE instead.
        signal(SIGPIPE, SIG_IGN)
        // A uffd per restored task and forked child: take every descriptor the hard limit allows.
        DescriptorLimit.raise()
        let arguments = normalizedArguments(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
