import Foundation
import LazyPagesEngine
import PageServer
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Faults of the network and of the server, injected into real restores.
@Suite("Network faults during remote restores", .serialized, .timeLimit(.minutes(20)))
struct NetworkFaultTests {
    @Test("server killed mid-transfer (reply cut inside page data), refused while down, back again: the client reconnects, re-sends and finishes every byte")
    func killedAndRestarted() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        // 40 KiB + 100 bytes: a few answers, then a cut in the middle of one.
        let proxy = try CuttingProxy(target: server.port, budget: 40 * 1024 + 100, downtime: 0.3)
        defer { proxy.stop() }
        let result = try remoteRestore(images, port: proxy.port, scenario: "verify") {
            $0.retries = 10
            $0.retryDelay = 0.05
        }
        #expect(result.report.allPassed, "\(describe(result.report))")
        #expect(result.outcome == .completed)
        #expect(proxy.acceptedConnections >= 2)
    }}

    @Test("a server that stalls: the client times out, retries with backoff, then fails loudly within bounds; processes die instead of reading zeros")
    func stalls() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let stalling = try ScriptedServer { _ in nil }
        defer { stalling.stop() }
        try expectRestoreGivesUp(images, port: stalling.port, stallTimeout: 0.4, retries: 2, within: .seconds(15))
    }}

    @Test("a server that lies is an error, never a wrong page",
          arguments: ["wrong-address", "oversized", "wrong-command"])
    func lies(_ lie: String) async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let liar = try ScriptedServer { request in
            var reply = PageServerMessage.pages(answering: request, pageCount: request.pageCount)
            switch lie {
            case "wrong-address": reply.address += 4096
            case "oversized": reply.pageCount += 1
            default: reply.cmd = 0x4242
            }
            // Page data that would pass for the image if it were ever used: zeros.
            return reply.bytes + [UInt8](repeating: 0, count: Int(reply.pageCount) * 4096)
        }
        defer { liar.stop() }
        let result = try remoteRestore(images, port: liar.port, scenario: "verify")
        guard case .failed(let reason) = result.outcome else {
            Issue.record("expected a failed restore, got \(result.outcome)")
            return
        }
        let expected = ["wrong-address": "wrong address echoed", "oversized": "oversized nr_pages",
                        "wrong-command": "wrong command"][lie]!
        #expect(reason.contains(expected), "\(reason)")
        #expect(reason.contains("127.0.0.1:\(liar.port)"), "\(reason)")
        #expect(result.statistics.pagesCopied == 0)
        for task in result.report.tasks {
            #expect(task.exitStatus == -SIGBUS, "\(describe(result.report))")
            #expect(!task.output.contains { $0.hasPrefix("FAIL") && $0.contains("byte=") })
        }
    }}

    @Test("nobody listening: the daemon fails at start, naming the server")
    func refusedAtStart() async throws { try await oneHeavyTestAtATime {
        let images = try RemoteImages()
        let closed = try ScriptedServer { _ in nil }
        let port = closed.port
        closed.stop()
        var options = PageServerClientOptions(host: "127.0.0.1", port: port)
        options.retries = 1
        options.retryDelay = 0.01
        let client = PageServerClient(options: options, logger: remoteLogger)
        #expect {
            _ = try LazyPagesSessionFactory.make(images, client)
        } throws: { error in
            "\(error)".contains("127.0.0.1:\(port)") && "\(error)".contains("unreachable")
        }
    }}
}

import LazyPagesCRIU

enum LazyPagesSessionFactory {
    static func make(_ images: RemoteImages, _ client: PageServerClient) throws -> LazyPagesSession {
        try LazyPagesSession(
            imagesDirectory: images.clientDirectory, workDirectory: images.workDirectory, remotePages: client,
            logger: remoteLogger)
    }
}
