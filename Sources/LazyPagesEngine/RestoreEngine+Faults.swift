import LinuxSupport
import SystemPackage
import Userfaultfd

/// Serving faults: every fault ends with its threads woken (by the copy itself or by `UFFDIO_WAKE`), deferred
/// until the event that blocks copies is read, parked for remote pages, or its process retired.
extension RestoreEngine {
    func serveQueuedFaults(_ process: TrackedProcess) {
        var i = 0
        while i < process.queuedFaults.count && !process.retired {
            let address = process.queuedFaults[i]
            i += 1
            serveFault(process, at: address)
        }
        process.queuedFaults.removeAll(keepingCapacity: true)
    }

    /// Retries the processes whose copies were refused at least `age` ns ago with no event to read since. While the
    /// loop is busy (filling), a refused process is retried every `busyRetryMicroseconds` rather than after every
    /// chunk: a fork copying the page tables of a large process refuses copies for milliseconds before its event is
    /// even queued, and retrying at once would spin on EAGAIN (tens of thousands of refused copies in a fork storm).
    func retryDeferredFaults(olderThan age: UInt64 = 0) {
        let now = monotonicNanoseconds()
        for process in Array(processes.values) where process.awaitingEvents && now &- process.refusedAt >= age {
            process.awaitingEvents = false
            process.queuedFaults.append(contentsOf: process.deferredFaults)
            process.deferredFaults.removeAll(keepingCapacity: true)
            serveQueuedFaults(process)
            retireIfComplete(process)
        }
    }

    /// Serves one fault: the pending run starting at the faulting page (fault-around), or a zero page when the page
    /// has no image data left to deliver.
    private func serveFault(_ process: TrackedProcess, at address: UInt64) {
        statistics.add(.faults)
        faultClock &+= 1
        fillChunkNow = configuration.fillChunkPages
        if configuration.spinAfterFaultMicroseconds > 0 { lastFaultAt = monotonicNanoseconds() }
        process.lastFault = faultClock
        fillOrder.faulted(process, clock: faultClock, liveCount: processes.count)
        let size = UInt64(process.space.pageSize)
        let page = address & ~(size - 1)
        // Reading forwards (this fault lies just past the previous one): the fill goes on from here, ahead of the
        // reader, instead of where it was. Random faults leave the fill where it is.
        if page > process.lastFaultPage, page - process.lastFaultPage <= UInt64(configuration.fillChunkPages) * size {
            process.fillCursor = page + size
        }
        process.lastFaultPage = page
        if workingSet.recorder != nil { recordFault(process, at: page) }
        let started = monotonicNanoseconds()
        settleFault(process, at: page)
        statistics.recordFaultLatency(nanoseconds: monotonicNanoseconds() &- started)
    }

    /// Settles the fault on `page` (see `serveFault`); also resumes a fault parked for remote pages.
    func settleFault(_ process: TrackedProcess, at page: UInt64) {
        var limit = max(1, configuration.faultAroundPages / process.space.basePagesPerPage)
        for _ in 0..<configuration.maxCopyAttempts {
            if process.retired { return }
            let step: CopyStep
            if let run = process.space.pendingRun(at: page, maxPages: limit) {
                if run.data == nil, remote != nil { return fetchForFault(process, run: run, page: page) }
                step = settle(copy(run, into: process), of: run, into: process, for: .fault)
            } else {
                let zeros = AddressSpace.Run(address: page, pageCount: 1, dumpAddress: page, data: nil,
                                             pageSize: process.space.pageSize)
                step = settle(zeroFill(process, at: page), of: zeros, into: process, for: .zeroPage)
            }
            switch step {
            case .delivered(_, let woken):
                // The faulting page leads the run: it is home, and its waiters were woken unless it was present.
                if !woken { wake(process, page) }
                return
            case .retry:
                continue
            case .shrink(let pages):
                limit = pages
            case .refused:
                return process.deferredFaults.append(page)
            case .dropped:
                return wake(process, page)
            case .retired, .failed:
                return
            }
        }
        logger.error("fault not settled after \(configuration.maxCopyAttempts) attempts; waking the thread",
                     metadata: ["address": "\(hex(page))"])
        wake(process, page)
    }

    func wake(_ process: TrackedProcess, _ page: UInt64) {
        // Errors here mean the range or the process is gone; the thread then is too.
        try? process.uffd.wake(AddressRange(start: page, length: UInt64(process.space.pageSize)))
    }

    /// Maps zeros over one page: `UFFDIO_ZEROPAGE` for base pages; hugetlbfs has no zero-page ioctl, so a huge page
    /// is copied from a read-only zero mapping instead.
    private func zeroFill(_ process: TrackedProcess, at page: UInt64) -> CopyOutcome {
        let size = process.space.pageSize
        if size == basePageSize { return process.uffd.zeroPage(at: page, length: size) }
        guard let zeros = zeroSource.bytes(size) else { return .failed(Errno.noMemory) }
        return process.uffd.copy(to: page, from: zeros, length: size)
    }

    @inline(__always)
    func copy(_ run: AddressSpace.Run, into process: TrackedProcess) -> CopyOutcome {
        guard let data = run.data else {
            return .failed(Errno.ioError)
        }
        return process.uffd.copy(to: run.address, from: data, length: run.length)
    }
}
