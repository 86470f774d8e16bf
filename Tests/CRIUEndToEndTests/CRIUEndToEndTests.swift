import CRIUImages
import Foundation
import LinuxSupport
import Testing
import TestSupport

/// Real `criu dump` of a real process tree (`lp-criu-workload`), real `criu restore --lazy-pages`, and the pages
/// served by lazy-pagesd — from the local images or a page server (CRIU's or ours) — or by CRIU's own daemon from our
/// page server. Every process of the restored tree checks every byte of its memory; each test also checks the exit
/// codes of criu restore, the daemon and the page server.
@Suite(
    "Real CRIU: dump, restore --lazy-pages", .serialized, .timeLimit(.minutes(20)),
    .enabled(if: RealCRIU.isAvailable, "needs the reference criu 4.2 ($LP_CRIU or ../shared/criu/build-criu) and root"))
struct CRIUEndToEndTests {
    enum Daemon { case lazyPagesd, criuLazyPages }
    enum Source {
        case localImages, criuPageServer, ourPageServer
        /// Ours, started with CRIU's command line (`page-server --lazy-pages ...`): one session, as CRIU's.
        case ourPageServerAsCRIU

        /// Ends when its one client is done (CRIU's page server, and ours with CRIU's command line).
        var servesOneSession: Bool { self == .criuPageServer || self == .ourPageServerAsCRIU }
    }

    /// Dumps `run`'s workload, serves its restore with `daemon` from `source`, wakes it and returns its verdict line,
    /// having checked that criu restore, the daemon and the page server all exited 0.
    static func restore(_ run: CRIURun, daemon: Daemon = .lazyPagesd, source: Source = .localImages) throws -> String {
        var server: TestSupport.PeerProcess?
        var pageSource = CRIURun.PageSource.localImages
        switch source {
        case .localImages: break
        case .criuPageServer:
            let (peer, port) = try run.startCRIUPageServer()
            server = peer
            pageSource = .pageServer(port: port)
        case .ourPageServer:
            let (peer, port) = try run.startOurPageServer()
            server = peer
            pageSource = .pageServer(port: port)
        case .ourPageServerAsCRIU:
            let (peer, port) = try run.startOurPageServerAsCRIU()
            server = peer
            pageSource = .pageServer(port: port)
        }
        let lazy = try daemon == .lazyPagesd ? run.startLazyPagesd(pageSource) : run.startCRIULazyPages(pageSource)
        try run.restore()
        run.wake()
        let line = try run.result()
        let daemonExit = try lazy.wait()
        #expect(daemonExit == 0, "\(lazy.name) exited \(daemonExit)\n\(run.logs())")
        if let server {
            // A one-session page server ends by itself, with 0, when its client closes; ours without CRIU's command
            // line serves until it is stopped.
            if source.servesOneSession {
                let serverExit = try server.wait()
                #expect(serverExit == 0, "\(server.name) exited \(serverExit)\n\(run.logs())")
            } else {
                let serverExit = try server.terminate()
                #expect(serverExit == -SIGTERM || serverExit == 0, "\(server.name) exited \(serverExit)\n\(run.logs())")
            }
        }
        return line
    }

    static func expectOK(_ line: String, _ run: CRIURun, processes: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        let fields = CRIURun.fields(line)
        #expect(line.hasPrefix("OK "), "\(line)\n\(run.logs())", sourceLocation: sourceLocation)
        #expect(fields["processes"] == "\(processes)", "\(line)", sourceLocation: sourceLocation)
        #expect(fields["pages"] == "\(run.pages)", "\(line)", sourceLocation: sourceLocation)
    }

    @Test(
        "local images, lazy-pagesd: every byte of every process and thread after the restore",
        arguments: [("random", 1), ("fork", 5), ("zombie", 1), ("threads", 1), ("tree", 5), ("guard", 1)])
    func localImages(mode: String, processes: Int) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: mode, mib: mode == "tree" ? 8 : 24)
        try run.dump()
        let line = try Self.restore(run)
        Self.expectOK(line, run, processes: processes)
        if mode == "zombie" { #expect(CRIURun.fields(line)["zombies"] == "2") }
        if mode == "threads" { #expect(CRIURun.fields(line)["threads"] == "4") }
        // MADV_GUARD_INSTALL pages are dumped as out-of-order VMA entries (zdtm maps12): once refused as unsorted.
        if mode == "guard" {
            #expect(CRIURun.fields(line)["guard_bad_bytes"] == "0")
            #expect(CRIURun.fields(line)["unguarded"] == "0")
        }
    }}

    @Test("criu page-server --lazy-pages as the source of lazy-pagesd", arguments: ["random", "fork"])
    func criuPageServerToLazyPagesd(mode: String) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: mode, mib: 24)
        try run.dump()
        let line = try Self.restore(run, source: .criuPageServer)
        Self.expectOK(line, run, processes: mode == "fork" ? 5 : 1)
    }}

    @Test("our lazy-pages page-server as the source of lazy-pagesd", arguments: ["random", "tree"])
    func ourPageServerToLazyPagesd(mode: String) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: mode, mib: mode == "tree" ? 8 : 24)
        try run.dump()
        let line = try Self.restore(run, source: .ourPageServer)
        Self.expectOK(line, run, processes: mode == "tree" ? 5 : 1)
    }}

    @Test("our lazy-pages page-server as the source of CRIU's own daemon (criu lazy-pages --page-server)")
    func ourPageServerToCRIULazyPages() async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: "random", mib: 24)
        try run.dump()
        let line = try Self.restore(run, daemon: .criuLazyPages, source: .ourPageServer)
        Self.expectOK(line, run, processes: 1)
    }}

    /// The drop-in: started as `criu page-server --lazy-pages` is (zdtm --remote-lazy-pages), our page server serves
    /// the one session of the restore's daemon, ours or CRIU's, and then exits 0 by itself, as CRIU's does.
    @Test("our page server with CRIU's command line: one session, then exit 0", arguments: [Daemon.lazyPagesd, .criuLazyPages])
    func ourPageServerServesOneSession(daemon: Daemon) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: "fork", mib: 16)
        try run.dump()
        let line = try Self.restore(run, daemon: daemon, source: .ourPageServerAsCRIU)
        Self.expectOK(line, run, processes: 5)
        let log = try String(contentsOfFile: run.images + "/page-server.log", encoding: .utf8)
        #expect(log.contains("serving this one client only"), "\(log.suffix(4000))")
        #expect(log.contains("session over"), "\(log.suffix(4000))")
    }}

    /// `--ps-socket` (issue 11): a page server and a lazy-pages daemon on the two ends of an inherited socket pair,
    /// as CRIU's RPC users connect them — CRIU's page server to lazy-pagesd, ours to lazy-pagesd and to CRIU's own
    /// daemon; every byte of every process right, both exit 0.
    @Test("page-server --ps-socket and lazy-pages --ps-socket on an inherited socket pair",
          arguments: [("criu page-server", "lazy-pagesd"), ("lazy-pages page-server", "lazy-pagesd"),
                      ("lazy-pages page-server", "criu lazy-pages")])
    func pageServerOnAnInheritedSocket(server serverName: String, daemon: String) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: "fork", mib: 24)
        try run.dump()
        let (server, peer) = try run.startPageServerOnSocketPair(criu: serverName == "criu page-server")
        let lazy = try run.startDaemonOnSocket(peer, criu: daemon == "criu lazy-pages")
        try run.restore()
        run.wake()
        let line = try run.result()
        Self.expectOK(line, run, processes: 5)
        #expect(try lazy.wait() == 0, "\(run.logs())")
        #expect(try server.wait() == 0, "\(run.logs())")
        if daemon == "lazy-pagesd" {
            let log = (try? String(contentsOfFile: run.work + "/lazy-pages.log", encoding: .utf8)) ?? ""
            #expect(log.contains("connected to the page server") && log.contains("on the inherited socket 4"),
                    "\(log.suffix(3000))")
        }
    }}

    /// The check is real: one byte changed in the dumped pages is found, at the page it was changed in.
    @Test("a byte changed in pages-*.img after the dump is reported by the restored process, at its page")
    func corruptedPageIsCaught() async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: "idle", mib: 8)
        try run.dump()
        // The first page from page 1000 of the workload's mapping on that has data (one in eight is a hole): find
        // its bytes in the pages file through the pagemap.
        let set = try ImageSet(directory: run.images)
        let process = try set.process(pid: run.pid)
        var page = 1000
        var hit: (LazyRun, String, UInt64)?
        while hit == nil && page < run.pages {
            let address = run.base + UInt64(page * basePageSize)
            if let found = process.lazyRuns.first(where: { $0.contains(address) }), case .file(let path, let offset) = found.data {
                hit = (found, path, offset + (address - found.address))
            } else {
                page += 1
            }
        }
        let (_, path, pageOffset) = try #require(hit, "no lazy page with data in the mapping from page 1000 on")
        let at = pageOffset + 123
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: at)
        let byte = try #require(handle.readData(ofLength: 1).first)
        try handle.seek(toOffset: at)
        handle.write(Data([byte ^ 0x5a]))
        try handle.close()

        let line = try Self.restore(run)
        let fields = CRIURun.fields(line)
        #expect(line.hasPrefix("FAIL "), "\(line)")
        #expect(fields["bad"] == "1", "\(line)")
        #expect(fields["first_page"] == "\(page)", "\(line)")
        #expect(fields["byte"] == "123", "\(line)")
    }}

    /// Issue 15 with the real peers: `criu restore --lazy-pages` of a real process tree, lazy-pagesd SIGKILLed once
    /// criu has restored the tree and handed every uffd over (no background fill: nearly every page still pending);
    /// its guardian starts a successor that continues the restore, and every process checks every byte.
    @Test("lazy-pagesd killed mid-restore: its successor finishes the restore, every byte right", arguments: ["fork", "threads"])
    func killedDaemonIsContinued(mode: String) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: mode, mib: 24)
        try run.dump()
        let pidFile = run.work + "/lazy-pagesd.pid"
        let lazy = try run.startLazyPagesd(extra: ["--no-background", "--pidfile", pidFile])
        try run.restore()
        // criu restore has returned: every task runs and its uffd is the daemon's. Kill the daemon now.
        kill(lazy.pid, SIGKILL)
        #expect(try lazy.wait() == -SIGKILL)
        run.wake()
        let line = try run.result()
        Self.expectOK(line, run, processes: mode == "fork" ? 5 : 1)
        // The successor (not our child: its pid is in the pid file it rewrote) finishes and exits.
        let deadline = ContinuousClock.now + .seconds(60)
        var successor: pid_t?
        while ContinuousClock.now < deadline {
            successor = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap {
                pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            guard let successor, successor != lazy.pid, kill(successor, 0) == 0 else { break }
            usleep(2000)
        }
        let log = (try? String(contentsOfFile: run.work + "/lazy-pages.log", encoding: .utf8)) ?? ""
        #expect(successor != nil && successor != lazy.pid, "no successor wrote the pid file\n\(log.suffix(4000))")
        #expect(log.contains("continuing the restore of a daemon that died"), "\(log.suffix(4000))")
        #expect(log.contains("restore finished outcome=completed"), "\(log.suffix(4000))")
        #expect(!lazy.stderr.contains("lp-guardian:") && !lazy.stderr.contains("refused"), "\(lazy.stderr.suffix(4000))")
    }}
}
