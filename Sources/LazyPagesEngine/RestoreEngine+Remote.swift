import SystemPackage
import Userfaultfd

/// The engine's bookkeeping of remote pages: which dump ranges are in flight, per image pid.
///
/// A fault on a page without local data sends an urgent request (its pending run, up to fault-around, stopping at
/// the first page already in flight) and parks the fault; the background fill sends requests while the source has
/// room. When an answer arrives its pages are copied into every process of that image pid that still has them
/// pending — at each process's own runtime address, found through the extents' dump addresses (they differ after
/// mremap) — and that pid's parked faults are settled again.
final class RemoteFetches {
    let source: RemotePageSource
    /// Requests sent and not yet answered, by image pid (a handful each: bounded by the source's background room
    /// plus the faults waiting).
    private(set) var inFlight: [Int32: [RemotePageRequest]] = [:]

    init(source: RemotePageSource) { self.source = source }

    /// The in-flight request holding dump page `address` of `pid`, if any.
    func request(of pid: Int32, covering address: UInt64) -> RemotePageRequest? {
        inFlight[pid]?.first { $0.dumpAddress <= address && address < $0.dumpEnd }
    }

    /// How many of the `pageCount` pages from `address` can be asked for before reaching one in flight.
    func pagesBeforeInFlight(of pid: Int32, from address: UInt64, pageCount: Int) -> Int {
        var count = pageCount
        for r in inFlight[pid] ?? [] where r.dumpEnd > address {
            if r.dumpAddress <= address { return 0 }
            count = min(count, Int((r.dumpAddress - address) / UInt64(pageSize)))
        }
        return count
    }

    func send(_ request: RemotePageRequest) {
        inFlight[request.imagePid, default: []].append(request)
        source.request(request)
    }

    /// Forgets an answered request.
    func answered(_ request: RemotePageRequest) {
        guard var list = inFlight[request.imagePid], let i = list.firstIndex(of: request) else { return }
        list.remove(at: i)
        inFlight[request.imagePid] = list.isEmpty ? nil : list
    }
}

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
        let dumpEnd = request.dumpAddress + UInt64(pageCount * pageSize)
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
            retireIfComplete(process)
        }
    }

    /// The remote source gave up (or broke the protocol): the pages still pending can never be delivered. Every
    /// one of them is poisoned (`UFFDIO_POISON`: touching it raises SIGBUS, and the threads waiting on it are woken
    /// into that) and every uffd is closed (addresses the image never held read zeros, as they should): a process is
    /// killed rather than left hung or handed zeros for its data. Tasks announced later get the same at once. The
    /// restore fails with `reason` as soon as every task is announced.
    public func failRemotePages(_ reason: String) {
        guard remoteFailure == nil else { return }
        remoteFailure = reason
        logger.error("remote pages unavailable: poisoning what is still pending", metadata: ["reason": "\(reason)"])
        for process in Array(processes.values) where !process.retired { abandon(process) }
        if allAnnounced { fail(reason) }
    }

    /// Poisons every pending page of `process` and stops tracking it.
    func abandon(_ process: TrackedProcess) {
        let poisoned = poisonPending(process)
        process.parkedFaults.removeAll()
        if !process.retired { retire(process, .exited, detail: "remote pages unavailable; \(poisoned) pages poisoned") }
    }

    private func poisonPending(_ process: TrackedProcess) -> Int {
        var poisoned = 0
        var refusals = 0
        while refusals < 8 && !process.retired {
            guard let run = process.space.nextPendingRun(from: 0, maxPages: Int.max) else { break }
            let outcome = process.uffd.poison(at: run.address, length: run.length)
            switch outcome {
            case .done(let n), .partial(let n):
                let pages = n / pageSize
                poisoned += pages
                process.space.markDelivered(run.address, pages: max(1, pages))
            case .retryAfterEvents:
                drainEvents(process)
                refusals += 1
            case .alreadyPresent:
                process.space.markDelivered(run.address, pages: 1)
            default:
                process.space.markDelivered(run.address, pages: run.pageCount)
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
    /// as many as the source takes; or note that there is nothing to ask for until something arrives.
    func fillFromRemote(_ process: TrackedProcess, run first: AddressSpace.Run) {
        guard let remote else { return }
        let room = min(remote.source.backgroundPagesAvailable, configuration.fillChunkPages)
        guard room > 0 else {
            process.fillWaitsForRemote = true
            return
        }
        var run = first
        // Skip runs in flight; each in-flight request is skipped at most once before we give up for now.
        let attempts = (remote.inFlight[process.imagePid]?.count ?? 0) + 1
        for _ in 0..<attempts {
            if run.data != nil {
                process.fillCursor = run.address  // a local run: the normal fill copies it next time
                return
            }
            let count = remote.pagesBeforeInFlight(
                of: process.imagePid, from: run.dumpAddress, pageCount: min(run.pageCount, room))
            if count > 0 {
                statistics.add(.remoteRequests)
                remote.send(RemotePageRequest(imagePid: process.imagePid, dumpAddress: run.dumpAddress,
                                              pageCount: count, urgent: false))
                process.fillCursor = run.address + UInt64(count * pageSize)
                return
            }
            guard let busy = remote.request(of: process.imagePid, covering: run.dumpAddress) else { break }
            let skip = min(run.pageCount, Int((busy.dumpEnd - run.dumpAddress) / UInt64(pageSize)))
            let from = run.address + UInt64(skip * pageSize)
            guard let next = process.space.nextPendingRun(from: from, maxPages: configuration.fillChunkPages)
            else { break }
            run = next
        }
        process.fillWaitsForRemote = true
    }

    // MARK: Delivery

    /// Copies the received dump range `[dumpStart, dumpEnd)` into every pending page of `process` it covers.
    /// Returns the runtime ranges it filled (their waiting threads were woken by the copy).
    private func deliver(_ bytes: UnsafeRawPointer, from dumpStart: UInt64, to dumpEnd: UInt64,
                         into process: TrackedProcess, urgent: Bool) -> [AddressRange]
    {
        var filled: [AddressRange] = []
        var refusals = 0
        while !process.retired {
            guard let target = nextDeliverable(in: process, from: dumpStart, to: dumpEnd) else { return filled }
            let source = bytes + Int(target.dumpAddress - dumpStart)
            let run = AddressSpace.Run(address: target.address, pageCount: target.pageCount,
                                       dumpAddress: target.dumpAddress, data: source)
            let outcome = process.uffd.copy(to: run.address, from: source, length: run.length)
            switch outcome {
            case .done(let n), .partial(let n):
                let pages = n / pageSize
                process.space.markDelivered(run.address, pages: pages)
                countCopied(urgent ? .pagesCopiedOnFault : .pagesCopiedInBackground, pages, into: process)
                if pages == 0 { refusals += 1 } else { filled.append(AddressRange(start: run.address, length: UInt64(n))) }
            case .alreadyPresent:
                statistics.add(.alreadyPresent)
                process.space.markDelivered(run.address, pages: 1)
            case .retryAfterEvents:
                statistics.add(.eagainRetries)
                drainEvents(process)
                refusals += 1
            case .rangeGone(let errno):
                if drainEvents(process) == 0 { drop(run, of: process, because: errno) }
            case .processGone(let errno):
                retire(process, .exited, detail: "\(errno)")
            case .failed(let errno):
                fail("copying \(run.length) bytes of remote pages to \(hex(run.address)) for pid \(process.imagePid) failed: \(copyFailure(errno))")
                return filled
            }
            if refusals > 8 {
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
    private func nextDeliverable(in process: TrackedProcess, from dumpStart: UInt64, to dumpEnd: UInt64)
        -> (address: UInt64, dumpAddress: UInt64, pageCount: Int)?
    {
        for extent in process.space.extents where extent.pending.setCount > 0 {
            let extentDumpEnd = extent.dumpAddress + UInt64(extent.pageCount * pageSize)
            guard extent.dumpAddress < dumpEnd, extentDumpEnd > dumpStart else { continue }
            let from = Int((max(dumpStart, extent.dumpAddress) - extent.dumpAddress) / UInt64(pageSize))
            let to = Int((min(dumpEnd, extentDumpEnd) - extent.dumpAddress) / UInt64(pageSize))
            guard let page = extent.pending.nextSet(from: from), page < to else { continue }
            let count = extent.pending.runLength(from: page, limit: to - page)
            let offset = UInt64(page * pageSize)
            return (extent.start + offset, extent.dumpAddress + offset, count)
        }
        return nil
    }
}
