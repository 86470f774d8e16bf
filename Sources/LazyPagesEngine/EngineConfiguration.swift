/// Tunables of one restore's engine.
public struct EngineConfiguration: Sendable {
    /// Pages copied in answer to one fault: the faulting page plus the pending pages right after it. Every extra
    /// page delays the faulting thread (about 0.7 µs each here, see BENCHMARKS.md), and the background fill brings
    /// the rest anyway, so the default is the faulting page alone.
    public var faultAroundPages: Int = 1
    /// Pages the background fill copies per call before it looks for faults again.
    public var fillChunkPages: Int = 64
    /// Whether to copy the remaining pages in the background once every task is announced.
    public var backgroundFill: Bool = true
    /// How long (ms) to wait before retrying a copy the kernel refused when no event was readable yet.
    public var refusedCopyRetryMilliseconds: Int32 = 1
    /// Whether a process with every page home is retired (its uffd closed) once every task is announced. Right
    /// when the restored process no longer holds its own uffd (CRIU's restorer closes it): the kernel then
    /// zero-fills what it touches. A Firecracker VM keeps its uffd, so balloon removals would fault with nobody
    /// answering: there the process is served until it exits.
    public var retireCompletedProcesses: Bool = true
    /// Without background fill, a process that exits with pages pending would go unnoticed (exit raises no uffd
    /// event). After this long without activity the engine copies one pending page per process: the kernel answers
    /// ESRCH for a process that is gone.
    public var livenessProbeMilliseconds: Int32 = 1000
    /// The most processes (so uffds) one restore may track, announced tasks and forked children together. One
    /// restore must not exhaust the daemon's descriptors for every other: past the bound the restore fails clearly.
    public var maxTrackedProcesses: Int = 16_384
    /// Copies into one process refused with ENOMEM in a row (its memory cgroup at its limit) before the restore
    /// fails; each retry waits `refusedCopyRetryMilliseconds` (and the loop's other work). Gives the kernel's OOM
    /// killer time to finish a victim: the copy then reports the process gone.
    public var memoryRefusalRetries: Int = 1000
    /// While the loop is busy (filling), how long (µs) a process whose copy was refused waits before it is retried:
    /// a fork copying the page tables of a large process refuses copies for milliseconds before its event is even
    /// queued, and retrying after every chunk would spin on EAGAIN.
    public var busyRetryMicroseconds: UInt64 = 200
    /// Copies tried for one fault or one fill chunk (each after events were read or with a shorter run) before the
    /// engine gives up on it for now: a fault's threads are then woken (they fault again), a chunk waits for the
    /// next turn.
    public var maxCopyAttempts: Int = 64
    /// Refused copies (EAGAIN) tolerated while delivering one remote answer into a process, or while poisoning its
    /// pending pages, before it stops: remote pages left pending are asked for again when touched or by the fill;
    /// pages left unpoisoned keep the process's uffd open (they must not read zeros).
    public var refusedCopyAttempts: Int = 8

    public init() {}

    /// The pages one fault may deliver and one fill copy may take. Every front end checks a configuration it was
    /// given with `validate()`: one rule, whatever spelling (a command-line option, a control-protocol field) set it.
    public static let faultAroundRange = 1...512
    public static let fillChunkRange = 1...4096

    /// Refuses settings outside their ranges, naming the first one found.
    public func validate() throws(ConfigurationError) {
        if !Self.faultAroundRange.contains(faultAroundPages) {
            throw ConfigurationError(setting: .faultAround, value: faultAroundPages, allowed: Self.faultAroundRange)
        }
        if !Self.fillChunkRange.contains(fillChunkPages) {
            throw ConfigurationError(setting: .fillChunk, value: fillChunkPages, allowed: Self.fillChunkRange)
        }
    }
}

/// A setting of `EngineConfiguration` outside its range. Front ends word it with their own spelling of the setting.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Setting: String, Sendable {
        case faultAround = "fault-around"
        case fillChunk = "fill-chunk"
    }

    public let setting: Setting
    public let value: Int
    public let allowed: ClosedRange<Int>

    /// `NAME must be 1 ... 512, got 0`, with the caller's name for the setting (`--fault-around`, `"faultAround"`).
    public func message(naming name: String) -> String {
        "\(name) must be \(allowed.lowerBound) ... \(allowed.upperBound), got \(value)"
    }

    public var description: String { message(naming: setting.rawValue) }
}
