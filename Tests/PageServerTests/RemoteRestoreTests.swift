import LazyPagesEngine
import PageServer
import RestoreSimulator
import Testing

/// Our server ↔ our client over loopback, driving real restores: every lazy page crosses the wire, and every
/// workload checks every byte it owns against the full image.
@Suite("Remote restores over loopback", .serialized, .timeLimit(.minutes(3)))
struct RemoteRestoreTests {
    @Test("scenarios restore every byte through the page server",
          arguments: ["verify", "fork-storm", "mremap-swap", "madvise", "threads"])
    func scenario(_ scenario: String) throws {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: testLogger)
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
    }

    @Test("two restores from one server, one after the other and at once: the same pages as often as asked")
    func manyRestoresFromOneDump() throws {
        let images = try RemoteImages()
        let second = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: testLogger)
        server.start()
        defer { server.stop() }
        let first = try remoteRestore(images, port: server.port, scenario: "verify")
        #expect(first.report.allPassed, "\(describe(first.report))")
        // The second restore's client images come from the other directory; the data is identical.
        let again = try remoteRestore(second, port: server.port, scenario: "verify", seed: 9)
        #expect(again.report.allPassed, "\(describe(again.report))")
        #expect(server.counters.connections == 2)
        #expect(server.counters.pagesSent >= 2 * 2 * RemoteImages.lazyPagesPerTask)
    }
}
