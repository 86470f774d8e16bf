import LinuxSupport
import SystemPackage
import Userfaultfd

extension RestoreEngine {
    /// Fetches the pages of extents without local data from `source` (a page server), starting it (it connects and
    /// watches its descriptors). Call before `run()`.
    public func useRemotePages(_ source: RemotePageSource) throws {
        precondition(remote == nil, "one remote page source per restore")
        remote = RemoteFetches(source: source)
        try source.start(engine: self)
    }

    /// The source's answer to `request`: `pageCount` pages (at most `request.pageCount`; a server may send fewer)
    /// at `bytes`, valid for the duration of the call. Pages the answer did not carry are asked for again when
    /// needed. Call on the loop thread.
    public func remotePagesArrived(_ request: RemotePageRequest, pageCount: Int, bytes: UnsafeRawPointer) {
        guard let remote else { return }
        precondition(pageCount <= request.pageCount, "a remote source delivered more pages than asked for")
        remote.answered(request)
        statistics.add(.remotePagesReceived, pageCount)
        for process in processes.values { process.fillWaitsForRemote = false }
        let dumpEnd = request.dumpAddress + UInt64(pageCount * basePageSize)
        // A copy can make us read a fork event, which tracks a new process of this pid: it needs the pages too.
        var visited = Set<Int>()
        var copied: [Int: [AddressRange]] = [:]
        while true {
            let next = processes.values.first { $0.imagePid == request.imagePid && !visited.contains($0.id) }
            guard let process = next else { break }
            visited.insert(process.id)
            copied[process.id] = deliver(bytes, from: request.dumpAddress, to: dumpEnd, into: process,
                                         urgent: request.urgent)
        }
        for process in Array(processes.values) where process.imagePid == request.imagePid {
            if !process.parkedFaults.isEmpty {
                let parked = process.parkedFaults
                process.parkedFaults.removeAll()
                let woken = copied[process.id] ?? []
                // A parked page this arrival copied is home and its threads were woken by the copy; any other is
                // settled again (fetched, zero-filled, or woken).
                for page in parked where !process.retired && !woken.contains(where: { $0.contains(page) }) {
                    settleFault(process, at: page)
                }
            }
            // Copies read events, and with them faults: serve them now (their uffd will not be readable for them).
            serveQueuedFaults(process)
            retireIfComplete(process)
        }
    }

    /// The remote source gave up (or broke the protocol): the pages still pending can never be delivered. Every
    /// one of them is poisoned (`UFFDIO_POISON`: touching it raises SIGBUS, and the threads waiting on it are woken
    /// into that) and every uffd is closed (addresses the image never held read zeros, as they should): a process is
    /// killed rather than left hung or handed zeros for its data. Tasks announced later get the same at once. The
    /// restore fails with `reason` as soon as every task is announced.
    public func failRemotePages(_ reason: String) {
        guard let remote, remote.failure == nil else { return }
        remote.failure = reason
        logger.error("remote pages unavailable: poisoning what is still pending", metadata: ["reason": "\(reason)"])
        for process in Array(processes.values) where !process.retired { abandon(process) }
        if allAnnounced { fail(reason) }
    }

    /// Poisons every pending page of `process` and stops tracking it. Pages that could not be poisoned must not
    /// read zeros: then the uffd stays open (their threads wait until the failed restore's processes are killed).
    func abandon(_ process: TrackedProcess) {
        let poisoned = poisonPending(process)
        process.parkedFaults.removeAll()
        guard !process.retired else { return }
        let left = process.space.pendingPages
        retire(process, .exited, detail: "remote pages unavailable; \(poisoned) pages poisoned"
                   + (left > 0 ? ", \(left) could not be: its uffd stays open" : ""),
               holdingUffd: left > 0)
    }

    private func poisonPending(_ process: TrackedProcess) -> Int {
        var poisoned = 0
        var refusals = 0
        var limit = Int.max
        while refusals < configuration.refusedCopyAttempts && !process.retired {
            guard let run = process.space.nextPendingRun(from: 0, maxPages: limit) else { break }
            let outcome = process.uffd.poison(at: run.address, length: run.length)
            switch settle(outcome, of: run, into: process, for: .poison) {
            case .delivered(let pages, let woken):
                if woken { poisoned += pages }
                if pages == 0 { refusals += 1 }
            case .retry, .refused:
                refusals += 1
            case .shrink(let pages):
                limit = pages
            case .dropped:
                continue
            case .retired, .failed:
                return poisoned
            }
        }
        return poisoned
    }

    // MARK: Fault and fill paths

    /// A fault on `page`, whose pending run has no local data: park it, and ask for the run unless it is in flight.
    func fetchForFault(_ process: TrackedProcess, run: AddressSpace.Run, page: UInt64) {
        guard let remote else { return }
        process.parkedFaults.append(page)
        statistics.add(.faultsParked)
        let count = remote.pagesBeforeInFlight(of: process.imagePid, from: run.dumpAddress, pageCount: run.pageCount)
        guard count > 0 else { return }  // the faulting page is on its way already
        statistics.add(.remoteRequests)
        remote.send(RemotePageRequest(imagePid: process.imagePid, dumpAddress: run.dumpAddress, pageCount: count,
                                      urgent: true))
    }

    /// The background fill reached `run`, which has no local data: ask for the next pending pages not in flight,
    /// as many as the source takes (up to `remoteRequestsPerStep` requests of at most a fill chunk each, handed to
    /// the source together); or note that there is nothing to ask for until something arrives.
    func fillFromRemote(_ process: TrackedProcess, run first: AddressSpace.Run) {
        guard let remote else { return }
        var room = remote.source.backgroundPagesAvailable
        guard room > 0 else {
            process.fillWaitsForRemote = true
            return
        }
        var batch: [RemotePageRequest] = []
        // Each request is tracked as in flight when it is made (the next one must not overlap it); all are sent
        // when this step ends, whichever way.
        defer { remote.send(batch: batch) }
        var run = first
        // Skip runs in flight, moving the cursor past each one: the next call goes on from there instead of walking
        // the same requests again. After a few, wait for an answer (one is due: the skipped requests are in
        // flight). Walking every request in flight on every call was quadratic where hundreds are in flight and
        // all of them lie ahead of the cursor (after it wraps around at the end of the space): zdtm maps06.
        let attempts = min((remote.inFlight[process.imagePid]?.count ?? 0) + 1, Self.remoteFillSkips)
        var skips = 0
        while skips < attempts {
            if run.data != nil {
                process.fillCursor = run.address  // a local run: the normal fill copies it next time
                return
            }
            let count = remote.pagesBeforeInFlight(
                of: process.imagePid, from: run.dumpAddress,
                pageCount: min(run.pageCount, room, configuration.fillChunkPages))
            if count > 0 {
                statistics.add(.remoteRequests)
                let request = RemotePageRequest(imagePid: process.imagePid, dumpAddress: run.dumpAddress,
                                                pageCount: count, urgent: false)
                remote.track(request)
                batch.append(request)
                room -= count
                process.fillCursor = run.address + UInt64(count * basePageSize)
                guard room > 0, batch.count < configuration.remoteRequestsPerStep,
                      let next = process.space.nextPendingRun(from: process.fillCursor,
                                                              maxPages: configuration.fillChunkPages)
                else { return }
                run = next
                continue
            }
            guard let busy = remote.request(of: process.imagePid, covering: run.dumpAddress) else { break }
            skips += 1
            let skip = min(run.pageCount, Int((busy.dumpEnd - run.dumpAddress) / UInt64(basePageSize)))
            let from = run.address + UInt64(skip * basePageSize)
            process.fillCursor = from
            guard let next = process.space.nextPendingRun(from: from, maxPages: configuration.fillChunkPages)
            else { break }
            run = next
        }
        process.fillWaitsForRemote = true
    }

    /// How many requests in flight one background fill step skips at most before it waits for an answer.
    static let remoteFillSkips = 8

    // MARK: Delivery

    /// Copies the received dump range `[dumpStart, dumpEnd)` into every pending page of `process` it covers.
    /// Returns the runtime ranges it filled (their waiting threads were woken by the copy).
    private func deliver(_ bytes: UnsafeRawPointer, from dumpStart: UInt64, to dumpEnd: UInt64,
                         into process: TrackedProcess, urgent: Bool) -> [AddressRange]
    {
        var filled: [AddressRange] = []
        var refusals = 0
        var limit = Int.max
        while !process.retired {
            guard let target = nextDeliverable(in: process, from: dumpStart, to: dumpEnd, maxPages: limit)
            else { return filled }
            let source = bytes + Int(target.dumpAddress - dumpStart)
            let run = AddressSpace.Run(address: target.address, pageCount: target.pageCount,
                                       dumpAddress: target.dumpAddress, data: source)
            let outcome = process.uffd.copy(to: run.address, from: source, length: run.length)
            switch settle(outcome, of: run, into: process, for: .remote(urgent: urgent)) {
            case .delivered(let pages, let woken):
                limit = .max
                if pages == 0 { refusals += 1 }
                else if woken { filled.append(AddressRange(start: run.address, length: UInt64(pages * run.pageSize))) }
            case .retry, .refused:
                refusals += 1
            case .shrink(let pages):
                limit = pages
            case .dropped, .retired:
                continue
            case .failed:
                return filled
            }
            if refusals > configuration.refusedCopyAttempts {
                // The event behind the refusals is not readable yet: leave these pages pending; they are asked for
                // again when touched or by the background fill.
                logger.debug("remote pages not copied: the kernel keeps refusing", metadata: [
                    "pid": "\(process.imagePid)", "process": "\(process.id)", "dump": "\(hex(dumpStart))",
                ])
                return filled
            }
        }
        return filled
    }

    /// The first pending run of `process` whose dump address lies in `[dumpStart, dumpEnd)`: runtime address,
    /// dump address, page count (within one extent).
    private func nextDeliverable(in process: TrackedProcess, from dumpStart: UInt64, to dumpEnd: UInt64,
                                 maxPages: Int) -> (address: UInt64, dumpAddress: UInt64, pageCount: Int)?
    {
        // Many small extents (a VMA each) and one page per answer: a scan of every extent per answer was the
        // restore's main cost (zdtm maps05, 4106 extents); look up the candidates instead.
        let space = process.space
        for e in space.extents(overlappingDump: dumpStart, dumpEnd) where space.extents[e].pending.setCount > 0 {
            let extent = space.extents[e]
            let extentDumpEnd = extent.dumpAddress + UInt64(extent.pageCount * basePageSize)
            guard extent.dumpAddress < dumpEnd, extentDumpEnd > dumpStart else { continue }
            let from = Int((max(dumpStart, extent.dumpAddress) - extent.dumpAddress) / UInt64(basePageSize))
            let to = Int((min(dumpEnd, extentDumpEnd) - extent.dumpAddress) / UInt64(basePageSize))
            guard let page = extent.pending.nextSet(from: from), page < to else { continue }
            let count = extent.pending.runLength(from: page, limit: min(to - page, maxPages))
            let offset = UInt64(page * basePageSize)
            return (extent.start + offset, extent.dumpAddress + offset, count)
        }
        return nil
    }
}
