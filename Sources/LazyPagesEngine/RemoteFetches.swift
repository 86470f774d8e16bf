import LinuxSupport

/// The engine's bookkeeping of remote pages: which dump ranges are in flight, per image pid.
///
/// A fault on a page without local data sends an urgent request (its pending run, up to fault-around, stopping at
/// the first page already in flight) and parks the fault; the background fill sends requests while the source has
/// room. When an answer arrives its pages are copied into every process of that image pid that still has them
/// pending — at each process's own runtime address, found through the extents' dump addresses (they differ after
/// mremap) — and that pid's parked faults are settled again.
final class RemoteFetches {
    let source: RemotePageSource
    /// Requests sent and not yet answered, by image pid, sorted by dump address. They never overlap (every request
    /// asks only for pages before the next one in flight, `pagesBeforeInFlight`), so sorted by start they are sorted
    /// by end too, and every look-up is a binary search: the background fill of a dump made of one-page VMAs keeps
    /// hundreds of one-page requests in flight (zdtm's maps06: 512, the source's whole room), and a scan of all of
    /// them for every request sent and every answer was a cost per page linear in that number.
    private(set) var inFlight: [Int32: [RemotePageRequest]] = [:]

    /// Set when the source gave up (`RestoreEngine.failRemotePages`): every pending page is poisoned, and tasks
    /// announced later are poisoned on arrival.
    var failure: String?

    init(source: RemotePageSource) { self.source = source }

    /// The index in `list` of the first request that ends after `address` (`list.count` if none).
    private static func firstEnding(after address: UInt64, in list: [RemotePageRequest]) -> Int {
        list.partitionPoint { $0.dumpEnd > address }
    }

    /// The in-flight request holding dump page `address` of `pid`, if any.
    func request(of pid: Int32, covering address: UInt64) -> RemotePageRequest? {
        guard let list = inFlight[pid] else { return nil }
        let i = Self.firstEnding(after: address, in: list)
        return i < list.count && list[i].dumpAddress <= address ? list[i] : nil
    }

    /// How many of the `pageCount` pages from `address` can be asked for before reaching one in flight.
    func pagesBeforeInFlight(of pid: Int32, from address: UInt64, pageCount: Int) -> Int {
        guard let list = inFlight[pid] else { return pageCount }
        let i = Self.firstEnding(after: address, in: list)
        guard i < list.count else { return pageCount }
        if list[i].dumpAddress <= address { return 0 }
        return min(pageCount, Int((list[i].dumpAddress - address) / UInt64(basePageSize)))
    }

    /// Sends `request`, which must not overlap one in flight (ask `pagesBeforeInFlight` first).
    func send(_ request: RemotePageRequest) {
        track(request)
        source.request(request)
    }

    /// Sends `batch` (background requests, each tracked with `track` when it was made) to the source together.
    func send(batch: [RemotePageRequest]) {
        guard !batch.isEmpty else { return }
        source.request(batch: batch)
    }

    /// Counts `request` as in flight (not sent yet: `send(batch:)` does), so that the next request made does not
    /// overlap it. It must not overlap one in flight.
    func track(_ request: RemotePageRequest) {
        var list = inFlight.removeValue(forKey: request.imagePid) ?? []
        let i = Self.firstEnding(after: request.dumpAddress, in: list)
        assert(i == list.count || request.dumpEnd <= list[i].dumpAddress, "\(request) overlaps \(list[i])")
        list.insert(request, at: i)
        inFlight[request.imagePid] = list
    }

    /// Forgets an answered request.
    func answered(_ request: RemotePageRequest) {
        guard var list = inFlight.removeValue(forKey: request.imagePid) else { return }
        let i = Self.firstEnding(after: request.dumpAddress, in: list)
        if i < list.count && list[i] == request { list.remove(at: i) }
        if !list.isEmpty { inFlight[request.imagePid] = list }
    }
}
