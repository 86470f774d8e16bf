import CRIUImages
import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

extension CRIUEndToEndTests {
    /// The lazy pages the dump holds for the workload's root process.
    static func lazyPages(of run: CRIURun) throws -> Int {
        try ImageSet(directory: run.images).process(pid: run.pid).lazyRuns.reduce(0) { $0 + $1.pageCount }
    }

    /// Issue 15, remote pages: lazy-pagesd serving a real `criu restore --lazy-pages` from a page server is
    /// SIGKILLed once every uffd is its own (no background fill: nearly every page pending, requests in flight).
    /// - our `lazy-pages page-server` (it serves any number of sessions), over TCP and over TLS, and started with
    ///   `criu page-server --lazy-pages`'s command line (one session, which it keeps open for a client that went
    ///   away without PS_IOV_CLOSE): the successor reconnects from the predecessor's command line (certificates
    ///   included), asks again for what was pending, and every process checks every byte;
    /// - CRIU's `criu page-server --lazy-pages` serves one session and exits when its connection closes, so no
    ///   successor can reach it: the successor refuses, naming why, and the processes are ended — never run on a
    ///   wrong page (no process reports FAIL).
    @Test("lazy-pagesd with a page server killed mid-restore: continued (our page server) or ended (CRIU's), never wrong",
          arguments: [(Source.ourPageServer, "many sessions"), (.ourPageServer, "TLS"),
                      (.ourPageServer, "criu page-server's command line"), (.criuPageServer, "")])
    func killedRemoteDaemonIsContinuedOrEnded(source: Source, variant: String) async throws { try await oneHeavyTestAtATime {
        let tls = variant == "TLS"
        // The kill must find pages pending: a dump whose root holds no lazy pages (seen once in CI at load ~10: one
        // task, 0 lazy ranges, the restore done before the kill; cause not found, see issue 15's note) cannot test
        // a hand-over. Such a dump is made again, once; a second one fails the test.
        var run = try CRIURun(mode: "fork", mib: 24)
        try run.dump()
        if try Self.lazyPages(of: run) == 0 {
            print("RemoteHandoverTests: the dump of pid \(run.pid) holds no lazy pages; dumping a fresh workload")
            run = try CRIURun(mode: "fork", mib: 24)
            try run.dump()
            try #require(try Self.lazyPages(of: run) > 0, "the dump of pid \(run.pid) holds no lazy pages\n\(run.logs())")
        }
        let certificates = tls ? try TestCertificates() : nil
        defer { certificates?.remove() }
        func tlsOptions(_ identity: KeyPath<TestCertificates, TestCertificates.Identity>) -> [String] {
            guard let certificates else { return [] }
            let chosen = certificates[keyPath: identity]
            return ["--tls", "--tls-cacert", certificates.caCertificate, "--tls-cert", chosen.certificate,
                    "--tls-key", chosen.key]
        }
        let (server, port) = source == .criuPageServer ? try run.startCRIUPageServer()
            : variant == "criu page-server's command line" ? try run.startOurPageServerAsCRIU()
            : try run.startOurPageServer(extra: tlsOptions(\.server))
        let pidFile = run.work + "/lazy-pagesd.pid"
        let lazy = try run.startLazyPagesd(.pageServer(port: port),
                                           extra: ["--no-background", "--pidfile", pidFile] + tlsOptions(\.client))
        try run.restore()
        kill(lazy.pid, SIGKILL)
        #expect(try lazy.wait() == -SIGKILL)
        run.wake()
        let line = try? run.result()
        // The successor (not our child) ends once the restore is done or refused: its pid file names a process
        // that exits.
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let successor = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap {
                pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            guard let successor, successor != lazy.pid, kill(successor, 0) == 0 else { break }
            usleep(2000)
        }
        let log = (try? String(contentsOfFile: run.work + "/lazy-pages.log", encoding: .utf8)) ?? ""
        switch source {
        case .ourPageServer:
            #expect(log.contains("continuing the restore of a daemon that died"), "\(log.suffix(4000))")
            Self.expectOK(line ?? "no result", run, processes: 5)
            #expect(log.contains("restore finished outcome=completed"), "\(log.suffix(4000))")
            #expect(log.contains("connected to the page server") && log.contains("tls=\(tls)"), "\(log.suffix(4000))")
            #expect(!lazy.stderr.contains("refused"), "\(lazy.stderr.suffix(4000))")
            if variant == "criu page-server's command line" {
                // One session, as CRIU's: it listened again when the dead daemon's connection ended, the successor
                // continued the session, and its PS_IOV_CLOSE ended the server with 0.
                #expect(try server.wait() == 0, "\(run.logs())")
                let serverLog = (try? String(contentsOfFile: run.images + "/page-server.log", encoding: .utf8)) ?? ""
                #expect(serverLog.contains("a client came back to the session"), "\(serverLog.suffix(3000))")
            } else {
                let serverExit = try server.terminate()
                #expect(serverExit == 0 || serverExit == -SIGTERM, "\(server.name) exited \(serverExit)\n\(run.logs())")
            }
        default:
            #expect(line == nil || line!.hasPrefix("OK "), "\(line ?? "")\n\(run.logs())")
            #expect(log.contains("refusing to continue the restore: the page source cannot be rebuilt: page server"),
                    "\(log.suffix(4000))")
            // It ended its session when the dead daemon's connection closed (its exit status then is CRIU's).
            _ = try server.wait()
        }
    }}
}
