/// The order in which the background fill serves processes: the one that faulted most recently first (it is
/// running and will touch more), else the oldest (lowest id). Kept incrementally, so picking the next process costs
/// amortized O(1) instead of a scan of every tracked process per fill chunk (quadratic in a restore of thousands
/// of tasks).
///
/// Entries are never updated in place: a process that faults again is pushed again, and the stale entry (its clock
/// no longer the process's `lastFault`) or a retired process's entry is dropped when met, or when the lists are
/// compacted.
struct FillOrder {
    /// Faulting processes with the fault clock of the fault that pushed them; most recent last.
    private var faulters: [(process: TrackedProcess, clock: UInt64)] = []
    /// Processes in id order (ids only grow); those that faulted since are dropped when met.
    private var neverFaulted: [TrackedProcess] = []
    private var neverFaultedHead = 0

    /// A process started being tracked.
    mutating func tracked(_ process: TrackedProcess) {
        neverFaulted.append(process)
    }

    /// `process` took the fault numbered `clock` (now its `lastFault`). `liveCount` bounds the lists' size.
    mutating func faulted(_ process: TrackedProcess, clock: UInt64, liveCount: Int) {
        // Indexed, not `faulters.last`: unspecialized (a debug build), `last` reads through a coroutine whose frame
        // is a heap allocation, one per fault (lp-fault-allocations, FaultAllocationTests).
        let lastIndex = faulters.count - 1
        if lastIndex >= 0 && faulters[lastIndex].process === process {
            faulters[lastIndex].clock = clock
        } else {
            faulters.append((process, clock))
        }
        if faulters.count > 2 * liveCount + 64 {
            faulters.removeAll { $0.process.retired || $0.process.lastFault != $0.clock }
        }
    }

    /// The process the fill serves next among those `eligible` says may be filled now, or nil.
    mutating func next(where eligible: (TrackedProcess) -> Bool) -> TrackedProcess? {
        var i = faulters.count - 1
        while i >= 0 {
            let (process, clock) = faulters[i]
            if process.retired || process.lastFault != clock {
                if i == faulters.count - 1 { faulters.removeLast() }
            } else if eligible(process) {
                return process
            }
            i -= 1
        }
        if neverFaultedHead > 64 && neverFaultedHead * 2 > neverFaulted.count {
            neverFaulted.removeFirst(neverFaultedHead)
            neverFaultedHead = 0
        }
        var j = neverFaultedHead
        while j < neverFaulted.count {
            let process = neverFaulted[j]
            if process.retired || process.lastFault != 0 {
                if j == neverFaultedHead { neverFaultedHead += 1 }
            } else if eligible(process) {
                return process
            }
            j += 1
        }
        return nil
    }
}
