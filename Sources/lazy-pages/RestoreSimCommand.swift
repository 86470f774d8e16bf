import ArgumentParser
import RestoreSimulator

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pages restore-sim`: plays `criu restore --lazy-pages -D DIR` against a running daemon.
struct RestoreSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-sim",
        abstract: "Play `criu restore --lazy-pages`: start one lp-workload per task of the images, hand their uffds "
            + "to the daemon on lazy-pages.socket, and report whether every byte came back right.")

    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "The image set.")
    var imagesDirectory: String

    @Option(name: [.customShort("W"), .customLong("work-dir")], help: "Where lazy-pages.socket is (default: -D).")
    var workDirectory: String?

    @Option(help: "Workload scenario: \(SimulationOptions.scenarios.joined(separator: ", ")).")
    var scenario: String = "verify"

    @Option(help: "Seed for the workloads' random choices.")
    var seed: UInt64 = 1

    @Option(name: .customLong("zombie"), help: ArgumentHelp("Restore this pid as a zombie (repeatable).", valueName: "PID"))
    var zombies: [Int32] = []

    @Flag(name: .customLong("hang-up-before-rstf"), help: "Close the socket without sending RSTF.")
    var hangUpBeforeRSTF = false

    @Option(help: "Seconds after which remaining workloads are killed and reported as failed.")
    var timeout: Int = 120

    @Option(help: "For `idle`: seconds to wait after the hand-over before telling the workloads to check.")
    var releaseAfter: Double = 0

    @Option(help: ArgumentHelp(
        "The lp-workload executable (default: next to this one); another workload (e.g. lp-bench-workload) brings "
            + "its own scenarios, which are passed on unchecked."))
    var workload: String?

    func validate() throws {
        guard workload != nil || SimulationOptions.scenarios.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; known: \(SimulationOptions.scenarios.joined(separator: ", "))")
        }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard releaseAfter >= 0 else { throw ValidationError("--release-after must not be negative") }
    }

    func run() throws {
        let options = SimulationOptions(
            imagesDirectory: imagesDirectory, workDirectory: workDirectory, scenario: scenario, seed: seed,
            zombies: Set(zombies), hangUpBeforeRSTF: hangUpBeforeRSTF, workloadPath: workload,
            timeout: .seconds(timeout))
        let simulation = try RestoreSimulation(options: options)
        try simulation.start()
        if releaseAfter > 0 { usleep(useconds_t(releaseAfter * 1_000_000)) }
        simulation.releaseWaiting()
        let report = try simulation.wait()
        for task in report.tasks {
            print("task \(task.virtualPid) (pid \(task.realPid)) exit \(task.exitStatus): \(task.passed ? "passed" : "FAILED")")
            for line in task.output { print("  \(line)") }
        }
        print(report.allPassed ? "restore-sim: all \(report.tasks.count) tasks passed" : "restore-sim: FAILED")
        if !report.allPassed { throw ExitCode(1) }
    }
}
