import Foundation
import LazyPagesEngine
import PageServer
import RestoreSimulator
import TestSupport
import Testing

/// Our server ↔ our client over loopback, driving real restores: every lazy page crosses the wire, and every
/// workload checks every byte it owns against the full image.
@Suite("Remote restores over loopback", .serialized, .timeLimit(.minutes(20)))
struct RemoteRestoreTests {
    @Test("scenarios restore every byte through the page server",
          arguments: ["verify", "fork-storm", "mremap-swap", "madvise", "threads"])
    func scenario(_ scenario: String) async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let result = try remoteRestore(images, port: server.port, scenario: scenario)
        #expect(result.report.allPassed, "\(describe(result.report))")
        #expect(result.outcome == .completed)
        #expect(result.closeStatus == 0)
        #expect(result.statistics[.remoteRequests] > 0)
        #expect(server.counters.badCommands == 0)
        #expect(server.counters.unknownAddresses == 0)
        // Every lazy page of both tasks arrived (some more than once when forked children ask again).
        #expect(result.statistics[.remotePagesReceived] >= 1)
        #expect(server.counters.connections == 1)
    }}

    /// Without a background fill only the liveness probe learns that a process exited with pages pending. The
    /// page-server client's timer (every 250 ms) keeps the loop's wait from ever timing out, so a probe that ran
    /// only on a timed-out wait never ran: the restore never ended (`lazy-pages bench`'s remote demand step hung).
    @Test("a process that exits with pages pending ends a remote restore without a background fill")
    func exitWithPagesPendingWithoutFill() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        var engine = EngineConfiguration()
        engine.backgroundFill = false
        let result = try remoteRestore(images, port: server.port, scenario: "exit-mid", engine: engine)
        #expect(result.report.allPassed, "\(describe(result.report))")
        #expect(result.outcome == .completed)
        #expect(result.statistics[.processesExited] >= 1, "the exit was never noticed")
    }}

    @Test("one server, many restores from one dump: one after the other, then three at once")
    func manyRestoresFromOneDump() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let first = try remoteRestore(images, port: server.port, scenario: "verify")
        #expect(first.report.allPassed, "\(describe(first.report))")
        let others = try (0..<3).map { _ in try RemoteImages() }
        let passed = ResultList()
        DispatchQueue.concurrentPerform(iterations: others.count) { i in
            let result = try? remoteRestore(others[i], port: server.port, scenario: "fork-storm", seed: UInt64(20 + i))
            passed.append(result.map { $0.report.allPassed && $0.outcome == .completed ? 1 : 0 } ?? -1)
        }
        #expect(passed.values == [1, 1, 1])
        #expect(server.counters.connections == 4)
        #expect(server.counters.pagesSent >= 4 * 2 * RemoteImages.lazyPagesPerTask)
    }}
}
