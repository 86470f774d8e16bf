import Atomics

/// Live counters of one restore. Written by the restore's loop thread, readable from any thread.
public final class RestoreStatistics: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        /// Page-fault messages served.
        case faults
        /// Pages copied in answer to a fault (including fault-around).
        case pagesCopiedOnFault
        /// Pages copied by the background fill.
        case pagesCopiedInBackground
        /// Zero pages mapped (faults outside every lazy range, or in removed ranges).
        case pagesZeroed
        /// Copies the kernel refused with EAGAIN because an event was queued (then retried after reading events).
        case eagainRetries
        /// Copies that found the page already present.
        case alreadyPresent
        /// Pages dropped because the kernel said their range no longer exists.
        case pagesDropped
        case forks, remaps, removes, unmaps
        /// Processes that got every page.
        case processesCompleted
        /// Processes that exited (or whose uffd went stale) before getting every page.
        case processesExited
        /// Tasks announced by the front end (including zombies).
        case tasksAnnounced
        /// Pages the image holds for the announced tasks (at announce time).
        case pagesExpected
        /// Requests sent to a remote page source (page server), and the pages its answers carried.
        case remoteRequests, remotePagesReceived
        /// Faults that waited for remote pages in flight.
        case faultsParked
        /// Copies (`UFFDIO_COPY` or a zero fill) that ended with the target process gone (ESRCH), and copies that
        /// failed outright (the restore fails, or the faulting thread is woken without a page).
        case copiesProcessGone, copiesFailed
        /// Copies (`UFFDIO_COPY`) and zero fills that delivered pages.
        case copiesDone, zeroFillsDone
        /// Pages delivered ahead of the fill from a working-set profile (also counted in `pagesCopiedInBackground`),
        /// and profile entries skipped (not pending, or not in any range of the task).
        case pagesPrefetched, prefetchSkipped
        /// Of the pages copied, those copied into forked children (whose pages `pagesExpected` does not count: a
        /// job's progress is its announced tasks' pages home out of theirs expected).
        case pagesCopiedToForks
        /// Pages of announced tasks (the pages `pagesExpected` counts) still pending when their task exited: nobody
        /// needs them any more, so with the pages copied and dropped they make up how far the restore has come.
        case pagesAbandoned
    }

    /// Upper bounds (µs) of the fault service latency buckets; one more bucket counts everything slower.
    public static let faultLatencyBucketBounds: [UInt64] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000]

    private let counters: [UnsafeAtomic<Int>]
    /// When the restore began (the first task announced) and ended; 0 while unknown.
    private let startNanoseconds = UnsafeAtomic<UInt64>.create(0)
    private let endNanoseconds = UnsafeAtomic<UInt64>.create(0)
    /// Faults by service time: one counter per bucket of `faultLatencyBucketBounds` plus the overflow bucket (not
    /// cumulative), and the sum of all service times in nanoseconds.
    private let latencyBuckets: [UnsafeAtomic<Int>]
    private let latencySumNanoseconds = UnsafeAtomic<UInt64>.create(0)

    public init() {
        counters = Counter.allCases.map { _ in UnsafeAtomic<Int>.create(0) }
        latencyBuckets = (0...Self.faultLatencyBucketBounds.count).map { _ in UnsafeAtomic<Int>.create(0) }
    }

    deinit {
        for counter in counters { counter.destroy() }
        for bucket in latencyBuckets { bucket.destroy() }
        latencySumNanoseconds.destroy()
        startNanoseconds.destroy()
        endNanoseconds.destroy()
    }

    /// Marks the start of the restore (first call wins).
    public func markStarted() {
        _ = startNanoseconds.compareExchange(expected: 0, desired: monotonicNanoseconds(), ordering: .relaxed)
    }

    /// Marks the end of the restore (first call wins).
    public func markFinished() {
        _ = endNanoseconds.compareExchange(expected: 0, desired: monotonicNanoseconds(), ordering: .relaxed)
    }

    @inline(__always)
    public func add(_ counter: Counter, _ value: Int = 1) {
        counters[counter.rawValue].wrappingIncrement(by: value, ordering: .relaxed)
    }

    /// Records how long serving one fault took (allocation-free: a scan of a fixed table and two atomic adds).
    @inline(__always)
    public func recordFaultLatency(nanoseconds: UInt64) {
        let micros = nanoseconds / 1000
        var index = 0
        let bounds = Self.faultLatencyBucketBounds
        while index < bounds.count, micros >= bounds[index] { index += 1 }
        latencyBuckets[index].wrappingIncrement(ordering: .relaxed)
        latencySumNanoseconds.wrappingIncrement(by: nanoseconds, ordering: .relaxed)
    }

    /// Faults per latency bucket (not cumulative; the last entry is the overflow bucket) and the total time.
    public var faultLatency: (buckets: [Int], sumNanoseconds: UInt64) {
        (latencyBuckets.map { $0.load(ordering: .relaxed) }, latencySumNanoseconds.load(ordering: .relaxed))
    }

    public subscript(_ counter: Counter) -> Int { counters[counter.rawValue].load(ordering: .relaxed) }

    public var pagesCopied: Int { self[.pagesCopiedOnFault] + self[.pagesCopiedInBackground] }
    /// Seconds from the first task announced to the end of the restore (or to now while it runs).
    public var elapsedSeconds: Double {
        let start = startNanoseconds.load(ordering: .relaxed)
        guard start != 0 else { return 0 }
        let end = endNanoseconds.load(ordering: .relaxed)
        return Double((end != 0 ? end : monotonicNanoseconds()) - start) / 1e9
    }

    /// Every counter by name, for reports and JSON.
    public var snapshot: [String: Int] {
        Dictionary(uniqueKeysWithValues: Counter.allCases.map { ("\($0)", self[$0]) })
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
