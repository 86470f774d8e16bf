/// Working-set profiles: recording the order of faults, and delivering a recorded working set first.
///
/// When: a task's profiled pages are copied from the moment it is announced (as REAP does: the working set is home
/// before the process runs), whenever the loop has no fault to serve, ahead of the background fill and whether or
/// not the fill is on. CRIU hands over the uffd before its restorer has registered the lazy ranges; a copy into a
/// range not registered yet fails (ENOENT) without touching anything, so such a task's prefetch waits for `RSTF`
/// (every task restored, every range registered) and resumes where it stopped. After `RSTF` an entry whose range
/// is gone, or whose page is not pending (delivered, removed, or not in the image at all), is skipped.
/// The engine's working-set state: the recorder, the dump addresses to deliver first, and the processes with some
/// of theirs left (loop thread only).
final class WorkingSetPrefetch {
    /// Faults recorded for a working-set profile (`startRecordingProfile`), if recording.
    var recorder: ProfileRecorder?
    /// Dump addresses to deliver first, by image pid (`prefetch`).
    var addresses: [Int32: [UInt64]] = [:]
    /// Processes with profiled pages still to copy, in announce order.
    var queue: [TrackedProcess] = []
}

extension RestoreEngine {
    /// Records every fault from now on (call before `run`); read the result with `recordedProfile`.
    public func startRecordingProfile() {
        workingSet.recorder = ProfileRecorder()
    }

    /// The faults recorded so far, in order, once each; nil unless recording.
    public var recordedProfile: WorkingSetProfile? {
        workingSet.recorder.map { WorkingSetProfile(entries: $0.entries) }
    }

    /// Delivers the profiled pages of each task first (call before `run`).
    public func prefetch(_ profile: WorkingSetProfile) {
        var byPid: [Int32: [UInt64]] = [:]
        for entry in profile.entries { byPid[entry.imagePid, default: []].append(entry.dumpAddress) }
        workingSet.addresses = byPid
    }

    /// Notes the fault on `page` of `process` (fault path, only while recording).
    func recordFault(_ process: TrackedProcess, at page: UInt64) {
        guard let recorder = workingSet.recorder, let e = process.space.extentIndex(containing: page) else { return }
        let extent = process.space.extents[e]
        recorder.record(.init(imagePid: process.imagePid, dumpAddress: extent.dumpAddress + (page - extent.start)))
    }

    /// A task was announced: queue its profiled pages.
    func queuePrefetch(for process: TrackedProcess) {
        guard let addresses = workingSet.addresses[process.imagePid], !addresses.isEmpty else { return }
        process.prefetchQueue = addresses
        workingSet.queue.append(process)
    }

    /// `RSTF`: tasks whose prefetch waited for their ranges to be registered go on.
    func resumeHeldPrefetches() {
        for process in processes.values where process.prefetchHeld {
            process.prefetchHeld = false
            workingSet.queue.append(process)
        }
    }

    var hasPrefetchWork: Bool {
        workingSet.queue.contains { !$0.awaitingEvents }
    }

    /// Copies up to one fill chunk of profiled pages for one process (runs of consecutive profiled pages go in one
    /// copy).
    func prefetchOneChunk() {
        workingSet.queue.removeAll { $0.retired || $0.prefetchHeld || $0.prefetchCursor >= $0.prefetchQueue.count }
        // The process that faulted last is running now: its working set first (ties: announce order).
        var best: TrackedProcess?
        for candidate in workingSet.queue where !candidate.awaitingEvents {
            if best == nil || candidate.lastFault > best!.lastFault { best = candidate }
        }
        guard let process = best else { return }
        let size = process.space.pageSize
        var budget = max(1, configuration.fillChunkPages / process.space.basePagesPerPage)
        var runLimit = budget
        let queue = process.prefetchQueue
        copies: while budget > 0, process.prefetchCursor < queue.count, !process.retired {
            let dump = queue[process.prefetchCursor]
            var wanted = 1
            while wanted < min(budget, runLimit), process.prefetchCursor + wanted < queue.count,
                  queue[process.prefetchCursor + wanted] == dump &+ UInt64(wanted * size) {
                wanted += 1
            }
            guard let address = process.space.runtimeAddress(ofDumpAddress: dump),
                  let run = process.space.pendingRun(at: address, maxPages: wanted), let data = run.data
            else {
                process.prefetchCursor += 1
                statistics.add(.prefetchSkipped)
                continue
            }
            let outcome = process.uffd.copy(to: run.address, from: data, length: run.length)
            if case .rangeGone = outcome, !allAnnounced {
                // Not registered yet: wait for RSTF, then resume at this entry.
                process.prefetchHeld = true
                return
            }
            switch settle(outcome, of: run, into: process, for: .prefetch) {
            case .delivered(let pages, _):
                process.prefetchCursor += max(1, pages)
                budget -= max(1, pages)
            case .retry:
                continue
            case .shrink(let pages):
                runLimit = pages  // a run may span two VMAs (one copy cannot cross a boundary)
            case .refused:
                break copies  // an event is (about to be) queued: the loop reads it, then the prefetch goes on
            case .dropped:
                process.prefetchCursor += 1
                statistics.add(.prefetchSkipped)
            case .retired, .failed:
                return
            }
        }
        serveQueuedFaults(process)
        retireIfComplete(process)
    }
}

extension AddressSpace {
    /// Where the page at dump-time `address` lives now, if it is in one of the extents.
    func runtimeAddress(ofDumpAddress address: UInt64) -> UInt64? {
        // Usually the extent never moved: look it up by address first.
        if let e = extentIndex(containing: address), extents[e].start == extents[e].dumpAddress {
            return address
        }
        for extent in extents
        where address >= extent.dumpAddress && address - extent.dumpAddress < UInt64(extent.pageCount * extent.pageSize) {
            return extent.start + (address - extent.dumpAddress)
        }
        return nil
    }
}
