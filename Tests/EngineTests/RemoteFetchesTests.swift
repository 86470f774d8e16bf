import LinuxSupport
import Testing
@testable import LazyPagesEngine

/// The engine's book of remote requests in flight (`RemoteFetches`): kept sorted by dump address, so every
/// question about it is a binary search (a background fill keeps hundreds of one-page requests in flight). Pure
/// data structure: the source only records what it was asked.
@Suite struct RemoteFetchesTests {
    final class RecordingSource: RemotePageSource {
        var sent: [RemotePageRequest] = []
        func start(engine: RestoreEngine) throws {}
        func request(_ request: RemotePageRequest) { sent.append(request) }
        var backgroundPagesAvailable: Int { 512 }
    }

    let base: UInt64 = 0x7f00_0000_0000
    let page = UInt64(basePageSize)

    func request(_ page: UInt64, _ count: Int, pid: Int32 = 7) -> RemotePageRequest {
        RemotePageRequest(imagePid: pid, dumpAddress: base + page * self.page, pageCount: count, urgent: false)
    }

    @Test func answersQuestionsAboutRequestsSentOutOfOrder() {
        let source = RecordingSource()
        let fetches = RemoteFetches(source: source)
        // Sent out of address order (a fault's urgent request lands between background ones).
        for r in [request(10, 2), request(30, 1), request(0, 4), request(20, 3)] { fetches.send(r) }
        #expect(source.sent.count == 4)
        #expect(fetches.inFlight[7]?.map(\.dumpAddress) == [0, 10, 20, 30].map { base + $0 * page })

        // From a page inside a request: nothing to ask for; from a free page: up to the next request.
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 1 * page, pageCount: 8) == 0)
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 4 * page, pageCount: 100) == 6)
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 4 * page, pageCount: 3) == 3)
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 12 * page, pageCount: 100) == 8)
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 31 * page, pageCount: 100) == 100)
        #expect(fetches.pagesBeforeInFlight(of: 8, from: base, pageCount: 5) == 5, "another pid's requests do not count")

        #expect(fetches.request(of: 7, covering: base + 22 * page) == request(20, 3))
        #expect(fetches.request(of: 7, covering: base + 23 * page) == nil, "one past the end of a request")
        #expect(fetches.request(of: 7, covering: base + 9 * page) == nil)

        // Answers in any order; an unknown one changes nothing.
        fetches.answered(request(20, 3))
        fetches.answered(request(20, 3))
        fetches.answered(request(11, 1))
        #expect(fetches.inFlight[7]?.map(\.dumpAddress) == [0, 10, 30].map { base + $0 * page })
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base + 12 * page, pageCount: 100) == 18)
        for r in [request(0, 4), request(30, 1), request(10, 2)] { fetches.answered(r) }
        #expect(fetches.inFlight[7] == nil)
        #expect(fetches.pagesBeforeInFlight(of: 7, from: base, pageCount: 64) == 64)
    }
}
