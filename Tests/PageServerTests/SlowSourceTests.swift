import Foundation
import LazyPagesEngine
import PageServer
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A page source slower than the restore: a real `PageServer` behind a `ThrottlingProxy`, real workloads checking
/// every byte. The client must bound what it holds in flight (backpressure), keep serving faults while the fill
/// crawls, and treat a source slower than its timeout as dead: a clear error and poisoned pages, never zeros.
@Suite("Slow page sources", .serialized, .timeLimit(.minutes(20)))
struct SlowSourceTests {
    @Test("a throttled source (1 MiB/s, 2 ms per answer): every byte right, in-flight pages bounded, faults served during the fill")
    func throttled() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let proxy = try ThrottlingProxy(target: server.port, bytesPerSecond: 1 << 20, replyDelay: 0.002)
        defer { proxy.stop() }
        let backgroundBound = 64
        let started = ContinuousClock.now
        let result = try remoteRestore(images, port: proxy.port, scenario: "threads") {
            $0.backgroundPagesInFlight = backgroundBound
            $0.stallTimeout = 5
        }
        #expect(result.report.allPassed, "\(describe(result.report))")
        #expect(result.outcome == .completed)
        let lazyPages = 2 * RemoteImages.lazyPagesPerTask
        #expect(result.statistics[.pagesExpected] == lazyPages)
        #expect(result.statistics[.remotePagesReceived] >= lazyPages)
        // Faults were answered while background requests crawled through the proxy.
        #expect(result.statistics[.pagesCopiedOnFault] > 0)
        #expect(result.statistics[.pagesCopiedInBackground] > 0)
        // Backpressure: background pages in flight never exceed the bound; urgent ones are one fault-around run per
        // faulting thread (the threads scenario: a handful per task).
        #expect(proxy.maxOutstandingPages <= backgroundBound + 32,
                "peak \(proxy.maxOutstandingPages) pages in flight, \(proxy.connections) connections")
        #expect(proxy.maxOutstandingPages > 0)
        print("slow source: \(ContinuousClock.now - started), \(proxy.connections) connection(s), at most "
            + "\(proxy.maxOutstandingPages) pages in flight (background bound \(backgroundBound)), \(result.statistics[.pagesCopiedOnFault]) pages on fault, "
            + "\(result.statistics[.pagesCopiedInBackground]) in background")
    }}

    @Test("a source that trickles (2 KiB/s, below what the stall timeout allows): the client gives up, pages are poisoned, no zero page")
    func trickling() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let proxy = try ThrottlingProxy(target: server.port, bytesPerSecond: 2048)
        defer { proxy.stop() }
        try expectRestoreGivesUp(images, port: proxy.port, stallTimeout: 0.5, retries: 1, within: .seconds(20))
    }}
}
