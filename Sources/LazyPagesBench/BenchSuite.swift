import CRIUImages
import Foundation
import RestoreSimulator

/// Runs every scenario of `lazy-pages bench` side by side on the same image and collects a `BenchReport`.
/// `progress` gets one line per step (for stderr).
public final class BenchSuite {
    public let configuration: BenchConfiguration
    let progress: (String) -> Void

    public init(configuration: BenchConfiguration, progress: @escaping (String) -> Void = { _ in }) {
        self.configuration = configuration
        self.progress = progress
    }

    public func run() throws -> BenchReport {
        let remote = configuration.scenarios.isEmpty || configuration.scenarios.contains("e")
        for path in [configuration.binaries.daemon, configuration.binaries.baseline,
                     configuration.binaries.benchWorkload, configuration.binaries.workload]
            + (remote ? [configuration.binaries.pageServer] : [])
        where access(path, X_OK) != 0 {
            throw BenchError("missing executable \(path) (build the package first)")
        }
        let scratch = try ScratchDirectory(prefix: "lp-bench")
        defer { scratch.remove() }
        let latencies = configuration.latencyDirectory ?? scratch.path
        if configuration.latencyDirectory != nil { try? FileManager.default.createDirectory(atPath: latencies, withIntermediateDirectories: true) }

        var report = BenchReport(machine: .current(), imageBytes: configuration.bytes, tunables: configuration.tunables)
        progress("writing a \(configuration.bytes >> 20) MiB image")
        let image = try BenchImage(directory: scratch.path + "/images", bytes: configuration.bytes, seed: configuration.seed)
        let baselines = Baselines(binary: configuration.binaries.baseline, scratch: scratch.path)
        // (e): the client's view of the same dump (LAZY only, no page data); the server serves `image`.
        var clientImage: BenchImage?
        func remoteImages() throws -> String {
            if clientImage == nil {
                clientImage = try BenchImage(
                    directory: scratch.path + "/images-client", bytes: configuration.bytes, seed: configuration.seed,
                    remote: true)
            }
            return clientImage!.directory
        }

        func attempt(_ name: String, _ body: () throws -> Void) {
            let key = name.prefix { $0 != "-" && $0 != " " }
            guard configuration.scenarios.isEmpty || configuration.scenarios.contains(String(key)) else { return }
            progress(name)
            do { try body() } catch { report.failures[name] = "\(error)" }
        }

        attempt("ceiling") {
            for kib in [64, 4096] {
                report.ceiling.append(
                    try baselines.ceiling(pagesFile: image.pagesFile, chunkKiB: kib, repeats: configuration.ceilingRepeats))
            }
            // One thread per CPU, each over its own slice.
            let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            if cpus > 1 {
                report.ceiling.append(try baselines.ceiling(
                    pagesFile: image.pagesFile, chunkKiB: 4096, repeats: configuration.ceilingRepeats,
                    threads: min(cpus, 64)))
            }
        }
        // The floor and (a) are interleaved, `latencyRounds` times, and each pools its rounds' latencies, so that
        // noise from other load on the machine falls on both alike.
        var floorRuns: [[UInt64]] = [], spinRuns: [[UInt64]] = [], demandRuns: [FaultScenario] = [], singleRuns: [FaultScenario] = []
        var demandLatencies: [UInt64] = [], singleLatencies: [UInt64] = []
        var remoteDemandRuns: [FaultScenario] = [], remoteDemandLatencies: [UInt64] = []
        for round in 0..<configuration.latencyRounds {
            attempt("floor (round \(round + 1))") {
                let file = latencies + "/floor.\(round).txt"
                _ = try baselines.floor(
                    pagesFile: image.pagesFile, touches: configuration.touches,
                    seed: configuration.seed &+ UInt64(round), latencyFile: file)
                floorRuns.append(readLatencies(file))
            }
            attempt("floor-spin (round \(round + 1))") {
                let file = latencies + "/floor-spin.\(round).txt"
                _ = try baselines.floor(
                    pagesFile: image.pagesFile, touches: configuration.touches,
                    seed: configuration.seed &+ UInt64(round), latencyFile: file, spin: true)
                spinRuns.append(readLatencies(file))
            }
            attempt("a-demand (round \(round + 1))") {
                var tunables = configuration.tunables
                tunables.background = false
                let file = latencies + "/demand.\(round).txt"
                demandRuns.append(try faultScenario(
                    image: image, scratch: scratch.path, tunables: tunables, touches: configuration.touches,
                    latencyFile: file, seed: configuration.seed &+ UInt64(round)))
                demandLatencies += readLatencies(file)
            }
            attempt("a-demand-fault-around-1 (round \(round + 1))") {
                var tunables = configuration.tunables
                tunables.background = false
                tunables.faultAround = 1
                let file = latencies + "/demand-fa1.\(round).txt"
                singleRuns.append(try faultScenario(
                    image: image, scratch: scratch.path, tunables: tunables, touches: configuration.touches,
                    latencyFile: file, seed: configuration.seed &+ UInt64(round)))
                singleLatencies += readLatencies(file)
            }
            attempt("e-demand, remote (round \(round + 1))") {
                var tunables = configuration.tunables
                tunables.background = false
                let file = latencies + "/remote-demand.\(round).txt"
                remoteDemandRuns.append(try faultScenario(
                    image: image, scratch: scratch.path, tunables: tunables, touches: configuration.touches,
                    latencyFile: file, seed: configuration.seed &+ UInt64(round), remoteImages: try remoteImages()))
                remoteDemandLatencies += readLatencies(file)
            }
        }
        if !floorRuns.isEmpty {
            report.floor = FloorResult(latency: LatencySummary(nanoseconds: floorRuns.flatMap { $0 }))
            try? writeLatencies(floorRuns.flatMap { $0 }, to: latencies + "/floor.txt")
        }
        if !spinRuns.isEmpty {
            report.floorSpin = FloorResult(latency: LatencySummary(nanoseconds: spinRuns.flatMap { $0 }))
            try? writeLatencies(spinRuns.flatMap { $0 }, to: latencies + "/floor-spin.txt")
        }
        report.demand = pooled(demandRuns, demandLatencies)
        report.demandSinglePage = pooled(singleRuns, singleLatencies)
        try? writeLatencies(demandLatencies, to: latencies + "/demand.txt")
        try? writeLatencies(singleLatencies, to: latencies + "/demand-fa1.txt")
        report.remoteDemand = pooled(remoteDemandRuns, remoteDemandLatencies)
        if !remoteDemandRuns.isEmpty { try? writeLatencies(remoteDemandLatencies, to: latencies + "/remote-demand.txt") }
        attempt("b-fill") {
            report.fill = try fillScenario(
                image: image, scratch: scratch.path, workload: configuration.binaries.benchWorkload, scenario: "idle")
        }
        attempt("c-working") {
            report.working = try faultScenario(
                image: image, scratch: scratch.path, tunables: configuration.tunables, touches: 0,
                latencyFile: latencies + "/working.txt")
        }
        attempt("d-forking") {
            report.forking = try fillScenario(
                image: image, scratch: scratch.path, workload: configuration.binaries.workload, scenario: "fork-storm")
        }
        attempt("e-fill, remote") {
            report.remoteFill = try fillScenario(
                image: image, scratch: scratch.path, workload: configuration.binaries.benchWorkload, scenario: "idle",
                remoteImages: try remoteImages())
        }
        attempt("f-concurrent") {
            report.concurrent = try concurrentScenario(scratch: scratch.path, latencyFile: latencies + "/concurrent.txt")
        }
        for workload in configuration.criuWorkloadNames {
            attempt("criu-\(workload)") {
                report.criu.append(try criuComparison(workload, scratch: scratch.path))
            }
        }
        report.machine.loadAtEnd = currentLoad()
        return report
    }

    // MARK: Scenarios

    /// A restore with lp-bench-workload `touch`: `touches` random first touches (0: every page), timed in the
    /// workload. With `remoteImages` (scenario (e)) the daemon reads those (LAZY only) and fetches the pages from a
    /// page server serving `image`.
    private func faultScenario(
        image: BenchImage, scratch: String, tunables: DaemonTunables, touches: Int, latencyFile: String,
        seed: UInt64? = nil, remoteImages: String? = nil
    ) throws -> FaultScenario {
        let server = try remoteImages.map { _ in try startPageServer(image: image, scratch: scratch) }
        defer { _ = try? server?.stop() }
        let run = try restore(
            images: image.directory, daemonImages: remoteImages, daemonArguments: server?.daemonArguments ?? [],
            scratch: scratch, tunables: tunables,
            workload: configuration.binaries.benchWorkload, scenario: "touch", seed: seed ?? configuration.seed,
            environment: ["LP_BENCH_TOUCHES": String(touches), "LP_BENCH_LATENCIES": latencyFile])
        let line = run.outputLine
        return FaultScenario(
            latency: LatencySummary(nanoseconds: readLatencies(latencyFile)),
            touches: field(line, "touches").flatMap { Int($0) } ?? 0,
            faults: field(line, "faults").flatMap { Int($0) } ?? 0,
            totalSeconds: run.daemon.fillSeconds ?? (run.daemon.exitedAt - run.rstfSentAt),
            workloadSeconds: field(line, "seconds").flatMap { Double($0) } ?? 0,
            daemon: run.daemon, pageServerCPUSeconds: try server?.stop().cpuSeconds)
    }

    private func fillScenario(
        image: BenchImage, scratch: String, workload: String, scenario: String, remoteImages: String? = nil
    ) throws -> FillScenario {
        let server = try remoteImages.map { _ in try startPageServer(image: image, scratch: scratch) }
        defer { _ = try? server?.stop() }
        let run = try restore(
            images: image.directory, daemonImages: remoteImages, daemonArguments: server?.daemonArguments ?? [],
            scratch: scratch, tunables: configuration.tunables, workload: workload, scenario: scenario,
            environment: [:])
        let seconds = run.daemon.fillSeconds ?? (run.daemon.exitedAt - run.rstfSentAt)
        return FillScenario(
            seconds: seconds, gibPerSecond: Double(image.bytes) / seconds / Double(1 << 30),
            wallSeconds: run.daemon.exitedAt - run.rstfSentAt, passed: true, daemon: run.daemon,
            pageServerCPUSeconds: try server?.stop().cpuSeconds)
    }

    /// A fresh page server per remote restore, so that its CPU time is that restore's.
    private func startPageServer(image: BenchImage, scratch: String) throws -> PageServerRun {
        try PageServerRun(binary: configuration.binaries.pageServer, imagesDirectory: image.directory, scratch: scratch)
    }

    private func concurrentScenario(scratch: String, latencyFile: String) throws -> ConcurrentScenario {
        let count = configuration.concurrentRestores
        let image = try BenchImage(
            directory: scratch + "/images-concurrent", bytes: configuration.concurrentBytes, seed: configuration.seed)
        var daemons: [DaemonRun] = []
        var simulations: [RestoreSimulation] = []
        defer { daemons.forEach { $0.kill() } }
        for i in 0..<count {
            let work = scratch + "/work-concurrent-\(i)"
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            daemons.append(try DaemonRun(
                binary: configuration.binaries.daemon, imagesDirectory: image.directory, workDirectory: work,
                tunables: configuration.tunables))
        }
        let started = monotonicSeconds()
        for i in 0..<count {
            setenv("LP_BENCH_TOUCHES", "0", 1)
            setenv("LP_BENCH_LATENCIES", latencyFile + ".\(i)", 1)
            let simulation = try RestoreSimulation(options: SimulationOptions(
                imagesDirectory: image.directory, workDirectory: scratch + "/work-concurrent-\(i)", scenario: "touch",
                seed: configuration.seed &+ UInt64(i), workloadPath: configuration.binaries.benchWorkload,
                timeout: .seconds(Int(configuration.timeout))))
            try simulation.start()
            simulations.append(simulation)
        }
        unsetenv("LP_BENCH_LATENCIES")
        try waitForDaemons(daemons, timeout: configuration.timeout)
        var passed = true
        var all: [UInt64] = []
        var faults = 0
        for (i, simulation) in simulations.enumerated() {
            let report = try simulation.wait()
            passed = passed && report.allPassed
            all += readLatencies(latencyFile + ".\(i)")
            faults += report.tasks.flatMap(\.output).compactMap { field($0, "faults").flatMap { Int($0) } }.reduce(0, +)
        }
        try? writeLatencies(all, to: latencyFile)
        let results = try daemons.map { try $0.result() }
        for (i, r) in results.enumerated() where r.status != 0 {
            throw BenchError("restore \(i): \(daemons[i].failureText())")
        }
        guard passed else { throw BenchError("a concurrent restore's workload failed its page checks") }
        let wall = (results.map(\.exitedAt).max() ?? started) - started
        return ConcurrentScenario(
            restores: count, bytesEach: configuration.concurrentBytes, wallSeconds: wall,
            aggregateGiBps: Double(count * configuration.concurrentBytes) / wall / Double(1 << 30),
            slowestSeconds: results.compactMap(\.fillSeconds).max() ?? 0,
            latency: LatencySummary(nanoseconds: all), faults: faults,
            daemonCPUSeconds: results.map(\.cpuSeconds).reduce(0, +),
            maxPeakAnonKiB: results.map(\.peakAnonKiB).max() ?? 0,
            maxPeakRSSKiB: results.map(\.peakRSSKiB).max() ?? 0, passed: passed)
    }

    // MARK: One restore

    private struct RestoreRun {
        var daemon: DaemonResult
        var rstfSentAt: Double
        /// The workload's result line (OK/FAIL ...).
        var outputLine: String
    }

    private var restoreCount = 0

    /// Starts a daemon, plays the restore through RestoreSimulator with `workload scenario`, waits until the daemon
    /// exits (then releases `idle` workloads) and checks that both ended well. The workloads check against
    /// `images`; the daemon reads `daemonImages` (default: the same) with `daemonArguments` added.
    private func restore(
        images: String, daemonImages: String? = nil, daemonArguments: [String] = [], scratch: String,
        tunables: DaemonTunables, workload: String, scenario: String, seed: UInt64? = nil,
        environment: [String: String]
    ) throws -> RestoreRun {
        restoreCount += 1
        let work = scratch + "/work-\(restoreCount)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let daemon = try DaemonRun(
            binary: configuration.binaries.daemon, imagesDirectory: daemonImages ?? images, workDirectory: work,
            tunables: tunables, extraArguments: daemonArguments)
        defer { daemon.kill() }
        for (key, value) in environment { setenv(key, value, 1) }
        defer { for key in environment.keys { unsetenv(key) } }
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, workDirectory: work, scenario: scenario, seed: seed ?? configuration.seed,
            workloadPath: workload, timeout: .seconds(Int(configuration.timeout))))
        try simulation.start()
        let rstfSentAt = monotonicSeconds()
        let report: SimulationReport
        if tunables.background {
            do {
                try waitForDaemons([daemon], timeout: configuration.timeout)
            } catch {
                _ = try? simulation.wait()
                throw error
            }
            simulation.releaseWaiting()
            report = try simulation.wait()
        } else {
            // Without the background fill nothing tells the daemon that a workload which touched only some pages
            // has exited (a uffd gives no hang-up when its mm goes away) until its liveness probe (one copy per
            // process after a second without activity) gets ESRCH; then it completes and prints its summary.
            // SIGTERM only if it has not ended well after that.
            report = try simulation.wait()
            if !daemon.process.hasExited(waitingMilliseconds: 5_000) { daemon.kill(SIGTERM) }
            try waitForDaemons([daemon], timeout: 30)
        }
        let result = try daemon.result()
        guard result.status == 0 || !tunables.background else { throw BenchError(daemon.failureText()) }
        let lines = report.tasks.flatMap(\.output)
        guard report.allPassed else {
            throw BenchError("workload \(scenario) failed: \(lines.suffix(4).joined(separator: " | "))")
        }
        return RestoreRun(
            daemon: result, rstfSentAt: rstfSentAt, outputLine: lines.first { $0.hasPrefix("OK ") } ?? "")
    }
}

/// Rounds of one fault scenario as one: latencies pooled, counts and times summed, the last round's daemon.
private func pooled(_ runs: [FaultScenario], _ latencies: [UInt64]) -> FaultScenario? {
    guard var result = runs.last else { return nil }
    result.latency = LatencySummary(nanoseconds: latencies)
    result.touches = runs.map(\.touches).reduce(0, +)
    result.faults = runs.map(\.faults).reduce(0, +)
    result.workloadSeconds = runs.map(\.workloadSeconds).reduce(0, +)
    return result
}

func writeLatencies(_ values: [UInt64], to path: String) throws {
    try (values.map(String.init).joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
}

/// The three load averages of /proc/loadavg.
func currentLoad() -> String {
    readText("/proc/loadavg").split(separator: " ").prefix(3).joined(separator: " ")
}

/// `key=value` from a result line.
func field(_ line: String, _ key: String) -> String? {
    for word in line.split(separator: " ") where word.hasPrefix(key + "=") {
        return String(word.dropFirst(key.count + 1))
    }
    return nil
}

extension MachineInfo {
    static func current() -> MachineInfo {
        var name = utsname()
        uname(&name)
        let kernel = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpu = readText("/proc/cpuinfo").split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" }
            ?? "unknown"
        let memory = readText("/proc/meminfo").split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true)[1]) } ?? 0
        let formatter = ISO8601DateFormatter()
        return MachineInfo(
            kernel: kernel, cpu: cpu, cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), memoryMiB: memory / 1024,
            date: formatter.string(from: Date()), loadAtStart: currentLoad())
    }
}
