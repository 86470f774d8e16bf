import Foundation
import LazyPagesEngine
import LinuxSupport
import PageServer
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pages page-server --lazy-pages` as `criu page-server --lazy-pages` behaves (issue 11: zdtm
/// --remote-lazy-pages waited forever for ours to exit): one client only, then the exit, 0 for a session the client
/// ended, 1 with the reason for one that broke. `--single-session`/`--no-single-session` choose either way.
@Suite("Page server: CRIU's single session", .serialized, .timeLimit(.minutes(5)))
struct SingleSessionTests {
    /// The server's exit status once it exits by itself; nil (and killed) if it is still running after 30 s, a
    /// safety net: every case here ends at once.
    static func exitStatus(_ server: PageServerProcess) -> Int32? {
        let pidfd = ProcessDescriptor.open(server.process.pid)
        guard pidfd >= 0 else { return nil }
        defer { close(pidfd) }
        var watched = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        if retryingOnInterrupt({ poll(&watched, 1, 30_000) }) != 1 {
            kill(server.process.pid, SIGKILL)
            _ = server.process.wait()
            return nil
        }
        return server.process.wait()
    }

    /// One GET of two pages on `fd`, answered in full.
    static func get(_ fd: Int32) -> Bool {
        let request = PageServerMessage.get(pid: 1, address: RemoteImages.base, pageCount: 2)
        guard Wire.send(fd, request.bytes) else { return false }
        let reply = Wire.receive(fd, PageServerMessage.size)
        guard reply.count == PageServerMessage.size else { return false }
        return PageServerMessage(decoding: reply) == .pages(answering: request, pageCount: 2)
            && Wire.receive(fd, 2 * 4096).count == 2 * 4096
    }

    static func refusesConnections(port: UInt16) -> Bool {
        do {
            let fd = try TCPSocket.connect(host: "127.0.0.1", port: port, timeoutSeconds: 5)
            close(fd)
            return false
        } catch {
            return true
        }
    }

    /// A restore can end with requests in flight (its processes exited): our client's close must read past their
    /// answers to PS_IOV_CLOSE's status. Closing with them unread reset the connection, and the single session
    /// ended as failed ("Connection reset by peer", exit 1): seen in CI with a fork storm whose children exited.
    @Test("our client closing with answers unread: the status read past them, the session ends with 0")
    func ourClientClosesWithAnswersInFlight() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--lazy-pages", "-v4"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        var options = PageServerClientOptions(host: "127.0.0.1", port: server.port)
        options.retries = 1
        let client = PageServerClient(options: options, logger: remoteLogger)
        // The engine never runs: nothing reads the answers before the close.
        let engine = try RestoreEngine(logger: remoteLogger)
        try client.start(engine: engine)
        for k in 0..<8 {
            client.request(RemotePageRequest(imagePid: 1, dumpAddress: RemoteImages.base + UInt64(k * 16 * 4096),
                                             pageCount: 16, urgent: false))
        }
        #expect(client.close() == 0)
        #expect(Self.exitStatus(server) == 0, "\(server.stderr)")
    }

    @Test("--lazy-pages: the first client only; PS_IOV_CLOSE and its close end the server with 0")
    func cleanSessionExitsZero() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--lazy-pages", "-v4"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        let fd = try Wire.connect(port: server.port)
        #expect(Self.get(fd))
        // Answered, so accepted: the port is closed now, as CRIU's page server closes its listener.
        #expect(Self.refusesConnections(port: server.port), "a second client was let in")
        #expect(Self.get(fd), "the session goes on")
        #expect(Wire.send(fd, PageServerMessage(cmd: PageServerCommand.close).bytes))
        #expect(Wire.receive(fd, 4) == [0, 0, 0, 0], "PS_IOV_CLOSE's status")
        #expect(server.alive, "it waits for the client to close, as CRIU's does")
        close(fd)
        #expect(Self.exitStatus(server) == 0, "\(server.stderr)")
        #expect(server.stderr.contains("session over"), "\(server.stderr)")
    }

    @Test("--lazy-pages: a session that breaks (an unknown command) ends the server with 1 and the reason")
    func brokenSessionExitsOne() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--lazy-pages"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        let fd = try Wire.connect(port: server.port)
        defer { close(fd) }
        #expect(Wire.send(fd, PageServerMessage(cmd: 0x4242).bytes))
        #expect(Self.exitStatus(server) == 1, "\(server.stderr)")
        #expect(server.stderr.contains("lazy-pages page-server: the session failed:"), "\(server.stderr)")
        #expect(server.stderr.contains("sent an unexpected command"), "\(server.stderr)")
    }

    @Test("--single-session without --lazy-pages, --session-return-timeout 0: a client that closes without PS_IOV_CLOSE ends it with 0")
    func singleSessionFlag() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--single-session",
                                            "--session-return-timeout", "0"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        let fd = try Wire.connect(port: server.port)
        #expect(Self.get(fd))
        close(fd)
        #expect(Self.exitStatus(server) == 0, "\(server.stderr)")
    }

    /// Issue 15 with CRIU's command line: a lazy-pagesd killed mid-restore leaves the session without
    /// `PS_IOV_CLOSE`; its successor connects again and the session goes on (CRIU's page server would have ended).
    @Test("--lazy-pages: a client gone without PS_IOV_CLOSE may come back within --session-return-timeout; the session goes on")
    func aClientGoneWithoutClosingMayComeBack() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--lazy-pages", "-v4"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        let first = try Wire.connect(port: server.port)
        #expect(Self.get(first))
        // In the middle of a request, as a daemon killed while it sent one.
        #expect(Wire.send(first, Array(PageServerMessage.get(pid: 1, address: RemoteImages.base, pageCount: 2).bytes.prefix(5))))
        close(first)
        // Connecting again until the server listens again (it first has to see the connection end).
        var second: Int32 = -1
        let deadline = ContinuousClock.now + .seconds(10)
        while second < 0, ContinuousClock.now < deadline {
            second = (try? Wire.connect(port: server.port)) ?? -1
            if second < 0 { usleep(10_000) }
        }
        try #require(second >= 0, "the server did not listen again: \(server.stderr)")
        #expect(Self.get(second), "the session goes on")
        #expect(Self.refusesConnections(port: server.port), "a third client was let in")
        #expect(Wire.send(second, PageServerMessage(cmd: PageServerCommand.close).bytes))
        #expect(Wire.receive(second, 4) == [0, 0, 0, 0], "PS_IOV_CLOSE's status")
        close(second)
        #expect(Self.exitStatus(server) == 0, "\(server.stderr)")
        #expect(server.stderr.contains("listening again for its successor"), "\(server.stderr)")
        #expect(server.stderr.contains("a client came back to the session"), "\(server.stderr)")
    }

    @Test("--lazy-pages: nobody comes back within --session-return-timeout: the session ends as the client left it")
    func nobodyComesBack() throws {
        let images = try RemoteImages()
        let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0", "--lazy-pages", "-v4",
                                            "--session-return-timeout", "0.2"])
        defer { try? FileManager.default.removeItem(atPath: server.directory) }
        let fd = try Wire.connect(port: server.port)
        #expect(Self.get(fd))
        close(fd)  // at a request boundary: CRIU takes that as the session's end, and so do we once nobody returns
        #expect(Self.exitStatus(server) == 0, "\(server.stderr)")
        #expect(server.stderr.contains("no client came back to the session"), "\(server.stderr)")
    }

    @Test("--lazy-pages --no-single-session, and no --lazy-pages: many clients, one after another, until killed")
    func manySessions() throws {
        let images = try RemoteImages()
        for arguments in [["--lazy-pages", "--no-single-session"], []] {
            let server = try PageServerProcess(["-D", images.serverDirectory, "--port", "0"] + arguments)
            defer { server.stop() }
            for _ in 0..<2 {
                let fd = try Wire.connect(port: server.port)
                #expect(Self.get(fd), "\(arguments)")
                #expect(Wire.send(fd, PageServerMessage(cmd: PageServerCommand.close).bytes))
                #expect(Wire.receive(fd, 4) == [0, 0, 0, 0])
                close(fd)
            }
            // A third client is still served after the first two closed: the server did not end with them.
            let fd = try Wire.connect(port: server.port)
            #expect(Self.get(fd), "\(arguments)")
            close(fd)
            #expect(server.alive, "\(arguments): \(server.stderr)")
        }
    }
}
