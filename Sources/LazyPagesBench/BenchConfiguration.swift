/// What `lazy-pages bench` runs.
public struct BenchConfiguration: Sendable {
    /// Image size of the main scenarios (bytes, a multiple of 4 KiB).
    public var bytes: Int
    /// Random first touches timed for the floor and scenario (a).
    public var touches: Int
    /// Passes of each ceiling chunk size.
    public var ceilingRepeats: Int
    /// Which steps run: "ceiling", "floor", "a", "b", "c", "d", "e", "f", "criu" (empty: all).
    public var scenarios: Set<String> = []
    /// Interleaved rounds of the floor and scenario (a); each pools its rounds.
    public var latencyRounds: Int = 3
    /// Scenario (f): how many restores at once, and the size of each.
    public var concurrentRestores: Int
    public var concurrentBytes: Int
    /// Tunables passed to every daemon (nil: the daemon's defaults).
    public var tunables: DaemonTunables
    public var seed: UInt64
    /// Where the latency files (one ns value per line) are kept; nil: a scratch directory, removed at the end.
    public var latencyDirectory: String?
    /// Safety net per restore (seconds).
    public var timeout: Double
    public var binaries: Binaries
    /// The reference CRIU (`criu dump`, `criu restore --lazy-pages`, `criu lazy-pages`, `criu page-server`).
    public var criu = "/var/tmp/lazy-pages-criu-4.2/criu-4.2/criu/criu"
    /// Which workloads of the CRIU comparison run (`criuWorkloads`), and how many alternating rounds each.
    public var criuWorkloadNames: [String] = criuWorkloads
    public var criuRounds = 3
    /// A second lazy-pagesd in the CRIU comparison, with these flags added (e.g. a lever turned off), interleaved with
    /// the other two in every round: a lever's before and after from the same minutes, both against CRIU.
    public var criuVariantArguments: [String]?

    public struct Binaries: Sendable {
        public var daemon: String
        public var baseline: String
        public var benchWorkload: String
        public var workload: String
        /// `lazy-pages` (its `page-server` subcommand serves scenario (e)).
        public var pageServer: String
        /// The real process the CRIU comparison dumps (idle, fork and random modes).
        public var criuWorkload: String
        public init(
            daemon: String, baseline: String, benchWorkload: String, workload: String, pageServer: String,
            criuWorkload: String
        ) {
            self.daemon = daemon
            self.baseline = baseline
            self.benchWorkload = benchWorkload
            self.workload = workload
            self.pageServer = pageServer
            self.criuWorkload = criuWorkload
        }

        /// The executables next to `directory` (the build directory).
        public init(directory: String) {
            self.init(
                daemon: directory + "/lazy-pagesd", baseline: directory + "/lp-bench-baseline",
                benchWorkload: directory + "/lp-bench-workload", workload: directory + "/lp-workload",
                pageServer: directory + "/lazy-pages", criuWorkload: directory + "/lp-criu-workload")
        }
    }

    public init(
        bytes: Int, touches: Int, ceilingRepeats: Int, concurrentRestores: Int, concurrentBytes: Int,
        tunables: DaemonTunables, seed: UInt64, latencyDirectory: String?, timeout: Double, binaries: Binaries
    ) {
        self.bytes = bytes
        self.touches = touches
        self.ceilingRepeats = ceilingRepeats
        self.concurrentRestores = concurrentRestores
        self.concurrentBytes = concurrentBytes
        self.tunables = tunables
        self.seed = seed
        self.latencyDirectory = latencyDirectory
        self.timeout = timeout
        self.binaries = binaries
    }
}
