/// What one simulated `criu restore --lazy-pages` does.
public struct SimulationOptions: Sendable {
    /// The image set (`pstree.img`, `mm-*.img`, `pagemap-*.img`, `pages-*.img`).
    public var imagesDirectory: String
    /// Where the daemon listens on `lazy-pages.socket` (CRIU's `-W`, default `-D`).
    public var workDirectory: String
    /// The `lp-workload` scenario every task runs (`verify`, `idle`, `fork-storm`, `mremap-move`, `mremap-grow`,
    /// `mremap-shrink`, `mremap-swap`, `madvise`, `munmap-partial`, `threads`, `exit-mid`, and the reliability
    /// scenarios `threads16`, `uffd-events`, `fork2-storm`, `fork-exit-early`, `lazy-thp`, `many-vmas`,
    /// `sparse-huge`, `kernel-faults`).
    public var scenario: String
    /// Seeds every random choice of the workloads (mixed with each task's virtual pid); printed for replay.
    public var seed: UInt64
    /// Virtual pids restored as zombies: sent as a negative pid, without a descriptor, and not started.
    public var zombies: Set<Int32>
    /// Close the socket after the last task instead of sending "RSTF" (a failed restore, as the daemon sees it).
    public var hangUpBeforeRSTF: Bool
    /// The workload executable; `nil` means `lp-workload` next to the running executable (or test bundle), or
    /// `$LP_WORKLOAD` when set.
    public var workloadPath: String?
    /// Safety net: `wait()` kills every workload still running this long after `start()`.
    public var timeout: Duration
    /// Where `start()` makes the directory of the workloads' plan files (`lp-restore-sim.XXXXXX`, removed by
    /// `wait()`): `/tmp` by default; the demo puts it in its own directory, so that one removal takes everything.
    public var scratchParent = "/tmp"

    public init(
        imagesDirectory: String, workDirectory: String? = nil, scenario: String = "verify", seed: UInt64 = 1,
        zombies: Set<Int32> = [], hangUpBeforeRSTF: Bool = false, workloadPath: String? = nil,
        timeout: Duration = .seconds(60)
    ) {
        self.imagesDirectory = imagesDirectory
        self.workDirectory = workDirectory ?? imagesDirectory
        self.scenario = scenario
        self.seed = seed
        self.zombies = zombies
        self.hangUpBeforeRSTF = hangUpBeforeRSTF
        self.workloadPath = workloadPath
        self.timeout = timeout
    }

    /// The scenarios `lp-workload` knows.
    public static let scenarios = [
        "verify", "idle", "fork-storm", "mremap-move", "mremap-grow", "mremap-shrink", "mremap-swap", "madvise",
        "munmap-partial", "threads", "exit-mid", "threads16", "uffd-events", "fork2-storm", "fork-exit-early",
        "lazy-thp", "many-vmas", "sparse-huge", "kernel-faults", "forward-read",
    ]
}
