import ArgumentParser
import Foundation
import LazyPagesControl

/// `lazy-pages status [ID] [--watch]`: progress of one job or of all, redrawn live with --watch.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show jobs' progress: pages home / expected, faults, rate.")

    @OptionGroup var control: ControlOptions

    @Argument(help: "The job (default: every job).")
    var id: String?

    @Flag(name: .customLong("watch"), help: "Redraw every --interval seconds until the job(s) ended (Ctrl-C to stop).")
    var watch = false

    @Option(name: .customLong("interval"), help: "Seconds between redraws with --watch.")
    var interval = 0.5

    func validate() throws { guard interval > 0 else { throw ValidationError("--interval must be positive") } }

    func run() throws {
        var previousLines = 0
        while true {
            let reply = try control.send(ControlRequest(op: .status, id: id))
            let jobs = reply.job.map { [$0] } ?? reply.jobs ?? []
            if control.json {
                control.printJSON(reply)
            } else {
                var text = jobs.isEmpty ? ["no jobs"] : [JobInfo.header] + jobs.map(\.line)
                text = text.flatMap { $0.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
                // Move up over the previous drawing and clear it.
                if watch && previousLines > 0 { print("\u{1B}[\(previousLines)A\u{1B}[J", terminator: "") }
                print(text.joined(separator: "\n"))
                previousLines = text.count
            }
            fflush(nil)
            guard watch, jobs.contains(where: { !$0.state.isFinal }) else { return }
            usleep(useconds_t(interval * 1_000_000))
        }
    }
}
