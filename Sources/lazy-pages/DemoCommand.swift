import ArgumentParser
import Dispatch
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import Logging
import RestoreSimulator

/// `lazy-pages demo`: a whole lazy restore on a made-up image set, with nothing needed but the clone.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an image set, start the monitor, run an emulated `criu restore --lazy-pages` against it "
            + "with a live progress bar, verify every byte, and print the summary.")

    @Option(help: "Memory of the restored tasks in all (e.g. 64M, 1G).")
    var size = ByteCount(bytes: 256 << 20)

    @Option(help: "Number of restored tasks.")
    var tasks = 2

    @Option(help: "Workload scenario the restored tasks run: \(SimulationOptions.scenarios.joined(separator: ", ")).")
    var scenario = "verify"

    @Option(help: "Seed for the workloads' random choices.")
    var seed: UInt64 = 1

    @Flag(help: "Keep the image directory afterwards.")
    var keep = false

    func validate() throws {
        guard tasks >= 1 && tasks <= 64 else { throw ValidationError("--tasks must be 1...64") }
        guard SimulationOptions.scenarios.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; known: \(SimulationOptions.scenarios.joined(separator: ", "))")
        }
    }

    func run() throws {
        let directory = try temporaryDirectory()
        defer { if !keep { try? FileManager.default.removeItem(atPath: directory) } }
        print("lazy-pages demo: writing a \(size) image set of \(tasks) tasks to \(directory)")
        try SyntheticImages.writeMixed(directory: directory, tasks: tasks, totalBytes: size.bytes)

        let logger = Logger(label: "lazy-pagesd") { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let session = try LazyPagesSession(imagesDirectory: directory, workDirectory: directory, logger: logger)
        print("lazy-pages demo: monitor listening on \(session.listener.path); starting the restore (\(scenario))")
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var outcome: RestoreOutcome = .failed(reason: "did not run")
        let monitor = Thread {
            outcome = session.run()
            finished.signal()
        }
        monitor.name = "lazy-pages restore"
        monitor.start()

        let progress = ProgressBar(statistics: session.statistics)
        progress.start()
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: directory, workDirectory: directory, scenario: scenario, seed: seed))
        do {
            try simulation.start()
        } catch {
            session.engine.cancel(reason: "the emulated restore failed to start")
            finished.wait()
            progress.stop()
            throw error
        }
        if scenario == "idle" {
            finished.wait()
            finished.signal()
            simulation.releaseWaiting()
        }
        let report = try simulation.wait()
        if finished.wait(timeout: .now() + 60) == .timedOut {
            session.engine.cancel(reason: "the monitor did not finish within 60 s of the workloads")
            finished.wait()
        }
        progress.stop()

        for task in report.tasks {
            print("  task \(task.virtualPid): \(task.passed ? "verified" : "FAILED") — \(task.output.last ?? "no output")")
        }
        print(session.summary())
        guard outcome == .completed, report.allPassed else {
            print("lazy-pages demo: FAILED (\(outcome))")
            throw ExitCode.failure
        }
        print("lazy-pages demo: every byte of \(report.tasks.count) tasks verified")
    }

    private func temporaryDirectory() throws -> String {
        var template = Array("/tmp/lazy-pages-demo.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw ValidationError("cannot create a temporary directory") }
        return String(cString: made)
    }
}

/// A one-line live progress bar on stderr: pages home, faults served, background rate.
final class ProgressBar: @unchecked Sendable {
    private let statistics: RestoreStatistics
    private let stopped = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let interactive = isatty(2) != 0

    init(statistics: RestoreStatistics) { self.statistics = statistics }

    func start() {
        let thread = Thread { [self] in
            var lastPages = 0
            var lastTime = monotonicNanoseconds()
            var lastPrinted = lastTime
            while stopped.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
                let now = monotonicNanoseconds()
                let background = statistics[.pagesCopiedInBackground]
                let rate = Double((background - lastPages) * basePageSize) / (Double(now - lastTime) / 1e9) / Double(1 << 30)
                lastPages = background
                lastTime = now
                if interactive || now - lastPrinted >= 1_000_000_000 {
                    draw(rate: rate, final: false)
                    lastPrinted = now
                }
            }
            draw(rate: 0, final: true)
            done.signal()
        }
        thread.start()
    }

    func stop() {
        stopped.signal()
        done.wait()
    }

    private func draw(rate: Double, final: Bool) {
        let expected = max(1, statistics[.pagesExpected])
        let home = min(expected, statistics.pagesCopied + statistics[.pagesDropped])
        let fraction = Double(home) / Double(expected)
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(format: "[%@] %3.0f%%  pages home %d/%d  faults %d  background %.2f GiB/s",
                          bar, fraction * 100, home, expected, statistics[.faults], rate)
        let text = interactive ? "\r" + line + (final ? "\n" : "") : line + "\n"
        FileHandle.standardError.write(Data(text.utf8))
    }
}
