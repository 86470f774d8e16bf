import LinuxSupport

/// A request for pages that only a remote source (a page server) has: `pageCount` pages starting at the dump-time
/// address `dumpAddress` of the image task `imagePid` (what `PS_IOV_GET` asks for).
public struct RemotePageRequest: Sendable, Hashable, CustomStringConvertible {
    public var imagePid: Int32
    public var dumpAddress: UInt64
    public var pageCount: Int
    /// A thread is blocked on these pages (a fault): send before any background request still queued.
    public var urgent: Bool

    public init(imagePid: Int32, dumpAddress: UInt64, pageCount: Int, urgent: Bool) {
        self.imagePid = imagePid
        self.dumpAddress = dumpAddress
        self.pageCount = pageCount
        self.urgent = urgent
    }

    public var dumpEnd: UInt64 { dumpAddress + UInt64(pageCount * basePageSize) }

    public var description: String {
        "\(urgent ? "urgent" : "background") pid \(imagePid) \(hex(dumpAddress)) +\(pageCount) pages"
    }
}

/// Where the engine gets pages whose extents have no local data (`LazyExtent.data == nil`).
///
/// The engine calls everything on its loop thread and never blocks on the source. The source watches its own
/// descriptors with `RestoreEngine.watch(descriptor:handler:)` (sockets, timers), and from those handlers reports
/// every answered request with `RestoreEngine.remotePagesArrived(_:pageCount:bytes:)` — in any order, each request
/// exactly once — or ends the restore with `RestoreEngine.fail(_:)` when it gives up.
public protocol RemotePageSource: AnyObject {
    /// Called once by `RestoreEngine.useRemotePages(_:)`: connect, watch descriptors.
    func start(engine: RestoreEngine) throws
    /// Fetch these pages. Urgent requests go out before queued background ones.
    func request(_ request: RemotePageRequest)
    /// Fetch these background pages, in this order: the requests of one fill step, which a source may write
    /// together. (Default: `request(_:)` for each.)
    func request(batch: [RemotePageRequest])
    /// How many background pages the source takes right now (0: the engine holds its background fill until some
    /// request completes). Bounds the background bytes in flight, so a fault never waits behind much of them.
    var backgroundPagesAvailable: Int { get }
}

extension RemotePageSource {
    public func request(batch: [RemotePageRequest]) {
        for request in batch { self.request(request) }
    }
}
