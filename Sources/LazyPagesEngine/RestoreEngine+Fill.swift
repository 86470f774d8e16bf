/// The background fill: once every task is announced, the loop copies the remaining pages one chunk at a time
/// whenever it has no fault to serve.
extension RestoreEngine {
    var hasFillWork: Bool { nextToFill() != nil }

    /// The process that faulted most recently (it is running and will touch more), or else the oldest one, among
    /// those with pages to fill: the fill follows the faults, and short-lived children that never fault are served
    /// last.
    private func nextToFill() -> TrackedProcess? {
        fillOrder.next { !$0.awaitingEvents && !$0.fillWaitsForRemote && !$0.fillHeld && !$0.space.isComplete }
    }

    /// Copies one chunk for the process `nextToFill` names.
    func fillOneChunk() {
        if let best = nextToFill() { fill(best) }
    }

    /// Copies one pending page into each process: cheap, and the only way to learn that a process has exited when
    /// nothing else copies into it.
    func probeLiveness() {
        for process in Array(processes.values)
        where !process.awaitingEvents && !process.fillWaitsForRemote && !process.space.isComplete {
            fill(process, maxPages: 1)
        }
    }

    /// Pages of the next background chunk: doubled from `fillChunkPages` towards `fillChunkMaxPages` for every chunk
    /// copied without a fault served in between; reset by a fault (`serveFault`).
    func nextChunkPages() -> Int {
        let base = configuration.fillChunkPages
        let top = max(base, configuration.fillChunkMaxPages)
        if fillChunkNow < base || faultClock != fillChunkClock {
            fillChunkNow = base
        } else {
            fillChunkNow = min(top, fillChunkNow * 2)
        }
        fillChunkClock = faultClock
        return fillChunkNow
    }

    /// Copies the next pending run from the process's fill cursor, at most one chunk.
    private func fill(_ process: TrackedProcess, maxPages: Int? = nil) {
        var chunk = maxPages ?? max(1, nextChunkPages() / process.space.basePagesPerPage)
        attempts: for _ in 0..<configuration.maxCopyAttempts {
            if process.retired { return }
            guard let run = process.space.nextPendingRun(from: process.fillCursor, maxPages: chunk) else { break }
            if run.data == nil, remote != nil { return fillFromRemote(process, run: run) }
            let outcome = copy(run, into: process)
            if case .rangeGone = outcome, !allAnnounced {
                // An early fill (before RSTF): the restorer may not have registered this range yet. Nothing is
                // dropped; this process's fill waits for RSTF (its faults are served meanwhile).
                process.fillHeld = true
                break attempts
            }
            switch settle(outcome, of: run, into: process, for: .fill) {
            case .delivered(let pages, _):
                process.fillCursor = run.address + UInt64(pages * run.pageSize)
                break attempts
            case .retry:
                continue
            case .shrink(let pages):
                chunk = pages  // as for faults: a chunk spanning a VMA boundary is refused whole
            case .refused, .dropped:
                break attempts
            case .retired, .failed:
                return
            }
        }
        // Reading events may have queued faults: serve them now (their uffd will not be readable again for them).
        serveQueuedFaults(process)
        retireIfComplete(process)
    }
}
