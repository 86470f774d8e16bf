import ArgumentParser
import CRIUImages
import Dispatch
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LinuxSupport
import Logging
import RestoreSimulator

/// `lazy-pages demo`: a whole lazy restore on a made-up image set, with nothing needed but the clone.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an image set, start the monitor, run an emulated `criu restore --lazy-pages` against it "
            + "with a live progress bar, verify every byte, and print the summary.",
        discussion: """
            The image set goes to a new directory under /tmp, removed at the end (also on Ctrl-C or SIGTERM) \
            unless --keep; the demo first checks that /tmp has the disk and the machine the memory for it.
            """)

    // `.unconditional`: a value that looks like an option (`--tasks -1`) is still this option's value, so that it
    // gets the range check's message rather than "Missing value".
    @Option(parsing: .unconditional, help: "Memory of the restored tasks in all (e.g. 64M, 1G).")
    var size = ByteCount(bytes: 256 << 20)

    @Option(parsing: .unconditional, help: "Number of restored tasks (1...64).")
    var tasks = 2

    @Option(help: "Workload scenario the restored tasks run: \(SimulationOptions.scenarios.joined(separator: ", ")).")
    var scenario = "verify"

    @Option(parsing: .unconditional, help: "Seed for the workloads' random choices.")
    var seed: UInt64 = 1

    @Flag(help: "Keep the image directory afterwards.")
    var keep = false

    /// What the image set really holds: whole pages, an equal share per task.
    var imageBytes: UInt64 {
        UInt64(SyntheticImages.mixedPagesPerTask(tasks: tasks, totalBytes: size.bytes) * tasks * basePageSize)
    }

    func validate() throws {
        guard tasks >= 1 && tasks <= 64 else { throw ValidationError("--tasks must be 1...64, not \(tasks)") }
        guard SimulationOptions.scenarios.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; known: \(SimulationOptions.scenarios.joined(separator: ", "))")
        }
        let minimum = UInt64(SyntheticImages.minimumPagesPerTask * basePageSize * tasks)
        guard size.bytes >= minimum else {
            throw ValidationError("--size \(size) is too small: each task gets at least "
                + "\(SyntheticImages.minimumPagesPerTask) pages (\(ByteCount(bytes: minimum / UInt64(tasks)))), "
                + "so \(tasks) task\(tasks == 1 ? "" : "s") need at least \(ByteCount(bytes: minimum))")
        }
    }

    func run() throws {
        // Whole lines, in order with the progress bar on stderr, also through a pipe (`2>&1 | tee`).
        lineBufferStandardOutput()
        let bytes = imageBytes
        try DemoResources.check(bytes: bytes, directory: "/tmp")
        let directory = try temporaryDirectory()
        let cleanup = DemoCleanup(directory: keep ? nil : directory)
        cleanup.install()
        defer { cleanup.finish() }
        print("lazy-pages demo: writing a \(ByteCount(bytes: bytes)) image set of \(tasks) tasks to \(directory)")
        // Through the directory's descriptor (see DemoCleanup): a signal meanwhile need not wait for the writing.
        let handle = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard handle >= 0 else { throw ValidationError("cannot open \(directory): \(SystemCallError.reason(errno))") }
        defer { close(handle) }
        try SyntheticImages.writeMixed(directory: "/proc/self/fd/\(handle)", tasks: tasks, totalBytes: size.bytes)

        let logger = Logger(label: "lazy-pagesd") { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let session = try cleanup.guarded {
            try LazyPagesSession(imagesDirectory: directory, workDirectory: directory, logger: logger)
        }
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
        var options = SimulationOptions(imagesDirectory: directory, workDirectory: directory, scenario: scenario, seed: seed)
        options.scratchParent = directory  // its plan files too go with the directory
        let simulation = try RestoreSimulation(options: options)
        do {
            try cleanup.guarded {
                cleanup.watch(simulation)
                try simulation.start()
            }
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
