import CRIUImages
import Dispatch
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LinuxSupport
import Logging
import RestoreSimulator
import TestSupport
import Testing

/// Runs one real restore: a `LazyPagesSession` (the daemon, in this process, on its own thread) serving
/// `lp-workload` processes started by `RestoreSimulation`, which plays `criu restore --lazy-pages`.
struct RestoreRun {
    var outcome: RestoreOutcome
    var report: SimulationReport
    var statistics: RestoreStatistics
    /// The faults recorded (with `recordProfile`).
    var profile: WorkingSetProfile?

    static func run(
        images: String, scenario: String, seed: UInt64 = 1, zombies: Set<Int32> = [],
        hangUpBeforeRSTF: Bool = false, configuration: EngineConfiguration = EngineConfiguration(),
        killTasksOnFailure: Bool = false, recordProfile: Bool = false, prefetch: WorkingSetProfile? = nil
    ) throws -> RestoreRun {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let session = try LazyPagesSession(
            imagesDirectory: images, workDirectory: work, configuration: configuration,
            logger: testLogger("restore-test"))
        if recordProfile { session.engine.startRecordingProfile() }
        if let prefetch { session.engine.prefetch(prefetch) }
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var outcome: RestoreOutcome = .failed(reason: "daemon did not finish")
        let thread = Thread {
            outcome = session.run()
            finished.signal()
        }
        thread.start()
        var options = SimulationOptions(imagesDirectory: images, workDirectory: work, scenario: scenario, seed: seed)
        options.zombies = zombies
        options.hangUpBeforeRSTF = hangUpBeforeRSTF
        options.timeout = .seconds(60)
        let simulation = try RestoreSimulation(options: options)
        do {
            try simulation.start()
        } catch {
            session.engine.cancel(reason: "simulation failed to start")
            finished.wait()
            throw error
        }
        // A restore that fails takes its tasks with it (criu restore kills them); so does our emulated restorer.
        if hangUpBeforeRSTF {
            if finished.wait(timeout: .now() + 60) == .timedOut {
                session.engine.cancel(reason: "timed out")
                finished.wait()
            }
            finished.signal()
            simulation.killAll()
        }
        // An idle process only verifies once the daemon has delivered everything and let go.
        if scenario == "idle" {
            if finished.wait(timeout: .now() + 60) == .timedOut {
                session.engine.cancel(reason: "timed out")
                finished.wait()
            }
            finished.signal()
            simulation.releaseWaiting()
        }
        if killTasksOnFailure {
            // Like criu restore when the monitor fails: the restore's tasks are killed.
            let watcher = Thread {
                finished.wait()
                finished.signal()
                if case .failed = outcome { simulation.killAll() }
            }
            watcher.start()
        }
        let report = try simulation.wait()
        if finished.wait(timeout: .now() + 60) == .timedOut {
            session.engine.cancel(reason: "daemon still running 60 s after the workloads ended")
            finished.wait()
        }
        return RestoreRun(outcome: outcome, report: report, statistics: session.statistics,
                          profile: session.engine.recordedProfile)
    }

    var summary: String {
        "outcome: \(outcome)\n\(describe(report))\nstatistics: \(statistics.snapshot)"
    }
}

/// A richer image set for scenario tests: per task three VMAs with lazy runs, eager runs and holes (never-dumped
/// pages read zero), about 3.5 MiB each, every task with its own bytes.
enum ScenarioImages {
    static let base: UInt64 = 0x5b00_0000_0000
    static let page = UInt64(basePageSize)

    static func write(to directory: String, pids: [UInt32] = [100, 101]) throws {
        let specs = pids.enumerated().map { index, pid in
            let fill = PagePattern.filler(seed: 1000 + UInt64(pid), base: base)
            let a = base, b = base + 0x100_0000, c = base + 0x200_0000
            let lazy: PagemapFlags = [.lazy, .present]
            return ProcessSpec(
                pid: pid, ppid: index == 0 ? 0 : pids[0],
                vmas: [
                    VMA(start: a, end: a + 512 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: b, end: b + 256 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: c, end: c + 128 * page, prot: 3, flags: 0x22, status: 0x41),
                ],
                runs: [
                    RunSpec(address: a, pageCount: 200, flags: lazy, fill: fill),
                    RunSpec(address: a + 200 * page, pageCount: 20, flags: [.present], fill: fill),
                    RunSpec(address: a + 240 * page, pageCount: 272, flags: lazy, fill: fill),
                    RunSpec(address: b, pageCount: 256, flags: lazy, fill: fill),
                    RunSpec(address: c + 8 * page, pageCount: 100, flags: lazy, fill: fill),
                ])
        }
        try ImageWriter.write(directory: directory, processes: specs)
    }
}
