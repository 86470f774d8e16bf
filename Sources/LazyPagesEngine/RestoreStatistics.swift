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
    }

    private let counters: [UnsafeAtomic<Int>]
    /// When the restore began (the first task announced) and ended; 0 while unknown.
    private let startNanoseconds = UnsafeAtomic<UInt64>.create(0)
    private let endNanoseconds = UnsafeAtomic<UInt64>.create(0)

    public init() {
        counters = Counter.allCases.map { _ in UnsafeAtomic<Int>.create(0) }
    }

    deinit {
        for counter in counters { counter.destroy() }
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
