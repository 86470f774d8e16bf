/// Tunables of one restore's engine.
public struct EngineConfiguration: Sendable {
    /// Pages copied in answer to one fault: the faulting page plus the pending pages right after it. Every extra
    /// page delays the faulting thread (about 0.7 µs each here, see BENCHMARKS.md), and the background fill brings
    /// the rest anyway, so the default is the faulting page alone.
    public var faultAroundPages: Int = 1
    /// Pages the background fill copies per call before it looks for faults again, after a fault.
    public var fillChunkPages: Int = 64
    /// The most pages one background copy may grow to: each chunk copied with no fault served since the previous
    /// one doubles the next, up to this; a fault resets it to `fillChunkPages` (so a fault waits behind at most
    /// one small copy while the process is working, and an idle process is filled in few large copies, as CRIU
    /// grows its copies to 4 MiB). Equal to `fillChunkPages`: fixed chunks.
    public var fillChunkMaxPages: Int = 1024
    /// For this long (µs) after serving a fault, the loop polls its descriptors instead of sleeping when it has
    /// nothing else to do: the next fault of a working process is then seen without a wake-up (a cross-CPU
    /// interrupt). Costs up to one CPU while faults keep coming; an idle restore sleeps. 0: always sleep.
    public var spinAfterFaultMicroseconds: Int = 100
    /// Background requests for remote pages one fill step sends at most, handed to the source together (one write
    /// of the socket instead of one per request, and one loop turn): as many as the source has room for, up to
    /// this. 1: one request per step (the default: more did not measure better under load, issue 14 in
    /// BENCHMARKS.md; `--remote-requests-per-step 64` is the lever to try on a quiet machine).
    public var remoteRequestsPerStep: Int = 1
    /// Whether to copy the remaining pages in the background once every task is announced.
    public var backgroundFill: Bool = true
    /// Whether the background fill may start before every task is announced (before CRIU's `RSTF`), on each process
    /// as soon as its uffd arrives, while `criu restore` finishes the rest (CRIU waits for `RSTF`). A range the
    /// restorer has not registered yet refuses the copy (ENOENT): that process's fill then waits for `RSTF` with
    /// nothing dropped. The kernel never lets a copy overwrite a present page, so what the restorer wrote stays.
    /// Local pages only: with a remote source the fill starts at `RSTF`.
    public var fillBeforeAllTasksAnnounced: Bool = true
    /// Whether the page source maps its files into the daemon's page tables on a thread of its own as soon as it
    /// opens them (`MADV_POPULATE_READ`, CRIU's local images), so the loop's copies take no page faults on them.
    public var populateSource: Bool = false
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
    /// How long the loop may poll after a fault (µs): at most a tenth of a second of one CPU per fault.
    public static let spinAfterFaultRange = 0...100_000
    public static let remoteRequestsPerStepRange = 1...1024

    /// Refuses settings outside their ranges, naming the first one found.
    public func validate() throws(ConfigurationError) {
        if !Self.faultAroundRange.contains(faultAroundPages) {
            throw ConfigurationError(setting: .faultAround, value: faultAroundPages, allowed: Self.faultAroundRange)
        }
        if !Self.fillChunkRange.contains(fillChunkPages) {
            throw ConfigurationError(setting: .fillChunk, value: fillChunkPages, allowed: Self.fillChunkRange)
        }
        if !Self.fillChunkRange.contains(fillChunkMaxPages) {
            throw ConfigurationError(setting: .fillChunkMax, value: fillChunkMaxPages, allowed: Self.fillChunkRange)
        }
        if !Self.spinAfterFaultRange.contains(spinAfterFaultMicroseconds) {
            throw ConfigurationError(
                setting: .spinAfterFault, value: spinAfterFaultMicroseconds, allowed: Self.spinAfterFaultRange)
        }
        if !Self.remoteRequestsPerStepRange.contains(remoteRequestsPerStep) {
            throw ConfigurationError(
                setting: .remoteRequestsPerStep, value: remoteRequestsPerStep, allowed: Self.remoteRequestsPerStepRange)
        }
    }
}

/// A setting of `EngineConfiguration` outside its range. Front ends word it with their own spelling of the setting.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Setting: String, Sendable {
        case faultAround = "fault-around"
        case fillChunk = "fill-chunk"
        case fillChunkMax = "fill-chunk-max"
        case spinAfterFault = "spin-after-fault"
        case remoteRequestsPerStep = "remote-requests-per-step"
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
