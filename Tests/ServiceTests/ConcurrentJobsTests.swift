import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// Many restores at once through `lazy-pagesd serve` and `lazy-pages add/wait`: CRIU jobs (played by `lazy-pages
/// restore-sim`) and Firecracker jobs (played by `fc-emulator`) mixed, one failing in the middle.
@Suite(.serialized) struct ConcurrentJobsTests {
    @Test(.timeLimit(.minutes(20)), arguments: [2, 10])
    func concurrentRestoresFinishWhileOneFails(healthy: Int) async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let images = try ImageFixture()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let simulator = try BuiltProducts.path(of: "lazy-pages")
        let emulator = try BuiltProducts.path(of: "fc-emulator")

        var ids: [String] = []
        var players: [() throws -> Spawn.Output] = []
        // The failing job sits in the middle of the others.
        let failing = healthy / 2
        for index in 0...healthy {
            if index == failing || index % 2 == 0 {
                let work = try images.workDirectory("\(index)")
                ids.append(try daemon.add(["criu", "-D", images.images, "-W", work]))
                var argv = [simulator, "restore-sim", "-D", images.images, "-W", work, "--timeout", "60"]
                if index == failing { argv.append("--hang-up-before-rstf") }
                players.append(runInBackground(argv))
            } else {
                let socket = memory.socket("vm\(index)")
                ids.append(try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile]))
                players.append(runInBackground([
                    emulator, "--socket", socket, "--mem-file", memory.memoryFile,
                    "--region", "4k:512K", "--region", "4k:256K", "--threads", "2",
                ]))
            }
        }
        for (index, player) in players.enumerated() {
            let output = try player()
            if index == failing {
                #expect(output.exitCode != 0, "the restore whose restorer hung up cannot have passed")
            } else {
                #expect(output.exitCode == 0, "player \(index): \(output.stdout) \(output.stderr)")
            }
        }
        for (index, id) in ids.enumerated() {
            let waited = try daemon.cli(["wait", id, "--json"])
            let reply = try JSONDecoder().decode(ControlReply.self, from: Data(waited.stdout.utf8))
            if index == failing {
                #expect(waited.exitCode == 1)
                #expect(reply.job?.state == .failed)
                #expect(reply.job?.reason?.isEmpty == false)
            } else {
                #expect(waited.exitCode == 0, "job \(id): \(waited.stdout)")
                #expect(reply.job?.state == .completed)
                #expect(reply.job.map { $0.pagesHome >= $0.pagesExpected && $0.pagesExpected > 0 } == true,
                        "\(String(describing: reply.job))")
            }
        }
        let list = try daemon.request(ControlRequest(op: .list))
        #expect(list.jobs?.count == healthy + 1)
    }}

    @Test(.timeLimit(.minutes(20))) func cancelStopsAJobAndWaitSaysSo() async throws { try await oneHeavyTestAtATime {
        let daemon = try ServiceDaemon()
        let memory = try MemoryFixture(bytes: 1 << 20)
        let id = try daemon.add(["firecracker", "--socket", memory.socket("vm"), "--mem-file", memory.memoryFile])
        let listed = try daemon.cli(["list"])
        #expect(listed.stdout.contains("listening"), "\(listed.stdout)")
        let cancelled = try daemon.cli(["cancel", id])
        #expect(cancelled.exitCode == 0)
        #expect(cancelled.stdout.contains("cancelled"), "\(cancelled.stdout)")
        #expect(try daemon.cli(["wait", id]).exitCode == 1)
        // Its socket is gone with it.
        #expect(access(memory.socket("vm"), F_OK) != 0)
        let again = try daemon.cli(["cancel", id])
        #expect(again.exitCode == 1)
        #expect(again.stderr.contains("already ended"), "\(again.stderr)")
        let unknown = try daemon.cli(["wait", "999"])
        #expect(unknown.exitCode == 1)
        #expect(unknown.stderr.contains("no job 999"), "\(unknown.stderr)")
    }}
}
