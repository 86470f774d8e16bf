/// Everything one `lazy-pages bench` run measured. Encoded as JSON for machines; `table` for people.
public struct BenchReport: Sendable, Codable {
    public var machine: MachineInfo
    public var imageBytes: Int
    public var tunables: DaemonTunables
    public var ceiling: [CeilingResult] = []
    public var floor: FloorResult?
    /// The floor with a handler that spins on its uffd instead of sleeping (no wake-up in the way).
    public var floorSpin: FloorResult?
    /// (a) demand faults only, the daemon's settings.
    public var demand: FaultScenario?
    /// (a) again with `--fault-around 1`: one 4 KiB copy per fault, the floor's work.
    public var demandSinglePage: FaultScenario?
    /// (b) background fill of an idle process.
    public var fill: FillScenario?
    /// (c) a working process touching every page in random order while the fill runs.
    public var working: FaultScenario?
    /// (d) lp-workload fork-storm (children verify while the parent forks on).
    public var forking: FillScenario?
    /// (e) remote pages over loopback from `lazy-pages page-server`: (e-a) demand faults only (the same touches as
    /// (a), pooled over the rounds) and (e-b) background fill of an idle process.
    public var remoteDemand: FaultScenario?
    public var remoteFill: FillScenario?
    /// (f) concurrent restores.
    public var concurrent: ConcurrentScenario?
    /// The CRIU comparison: real dumps restored by `criu lazy-pages` and by lazy-pagesd, alternating.
    public var criu: [CRIUComparison] = []
    /// Scenarios that could not run, with why.
    public var failures: [String: String] = [:]

    /// The fill ceiling the ratios use: the best median over the chunk sizes of one thread, GiB/s.
    public var ceilingGiBps: Double { ceiling.filter { $0.threads == 1 }.map(\.median).max() ?? 0 }
}

public struct MachineInfo: Sendable, Codable {
    public var kernel: String
    public var cpu: String
    public var cpus: Int
    public var memoryMiB: Int
    public var date: String
    /// /proc/loadavg when the run started and ended: other load on the machine skews every number.
    public var loadAtStart: String
    public var loadAtEnd: String = ""
}

/// A scenario timed in the faulting process.
public struct FaultScenario: Sendable, Codable {
    public var latency: LatencySummary
    /// First touches timed; faults = touches that found the page missing (mincore) before touching.
    public var touches: Int
    public var faults: Int
    /// RSTF sent to the daemon's "restore finished" (all pages home or the process gone), seconds.
    public var totalSeconds: Double
    /// The workload's own touching loop, seconds.
    public var workloadSeconds: Double
    public var daemon: DaemonResult
    /// (e) only: CPU seconds of the page server that served this restore (the last round's, for pooled rounds).
    public var pageServerCPUSeconds: Double?
}

/// A scenario timed by when all pages are home.
public struct FillScenario: Sendable, Codable {
    /// RSTF read by the daemon to "restore finished" (its log), seconds.
    public var seconds: Double
    public var gibPerSecond: Double
    /// RSTF sent to the daemon's exit (includes its teardown), seconds.
    public var wallSeconds: Double
    public var passed: Bool
    public var daemon: DaemonResult
    /// (e) only: CPU seconds of the page server that served this restore.
    public var pageServerCPUSeconds: Double?
}

public struct ConcurrentScenario: Sendable, Codable {
    public var restores: Int
    public var bytesEach: Int
    /// First RSTF sent to the last daemon's exit, seconds.
    public var wallSeconds: Double
    public var aggregateGiBps: Double
    /// Longest single restore, RSTF read to finished (daemon log), seconds.
    public var slowestSeconds: Double
    public var latency: LatencySummary
    public var faults: Int
    public var daemonCPUSeconds: Double
    public var maxPeakAnonKiB: Int
    public var maxPeakRSSKiB: Int
    public var passed: Bool
}
