import CRIUImages
import Foundation
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
    enum Source { case localImages, criuPageServer, ourPageServer }

    /// Dumps `run`'s workload, serves its restore with `daemon` from `source`, wakes it and returns its verdict line,
    /// having checked that criu restore, the daemon and the page server all exited 0.
    static func restore(_ run: CRIURun, daemon: Daemon = .lazyPagesd, source: Source = .localImages) throws -> String {
        var server: PeerProcess?
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
        }
        let lazy = try daemon == .lazyPagesd ? run.startLazyPagesd(pageSource) : run.startCRIULazyPages(pageSource)
        try run.restore()
        run.wake()
        let line = try run.result()
        let daemonExit = try lazy.wait()
        #expect(daemonExit == 0, "\(lazy.name) exited \(daemonExit)\n\(run.logs())")
        if let server {
            // CRIU's page server ends when its client closes; ours serves until it is stopped.
            let serverExit = try source == .criuPageServer ? server.wait() : server.terminate()
            let expected: Int32 = source == .criuPageServer ? 0 : -SIGTERM
            #expect(serverExit == expected || serverExit == 0, "\(server.name) exited \(serverExit)\n\(run.logs())")
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
        arguments: [("random", 1), ("fork", 5), ("zombie", 1), ("threads", 1), ("tree", 5)])
    func localImages(mode: String, processes: Int) async throws { try await oneHeavyTestAtATime {
        let run = try CRIURun(mode: mode, mib: mode == "tree" ? 8 : 24)
        try run.dump()
        let line = try Self.restore(run)
        Self.expectOK(line, run, processes: processes)
        if mode == "zombie" { #expect(CRIURun.fields(line)["zombies"] == "2") }
        if mode == "threads" { #expect(CRIURun.fields(line)["threads"] == "4") }
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
            let address = run.base + UInt64(page * criuPageSize)
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
}
