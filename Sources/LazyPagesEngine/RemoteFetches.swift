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

    /// Set when the source gave up (`RestoreEngine.failRemotePages`): every pending page is poisoned, and tasks
    /// announced later are poisoned on arrival.
    var failure: String?

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
            count = min(count, Int((r.dumpAddress - address) / UInt64(basePageSize)))
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
