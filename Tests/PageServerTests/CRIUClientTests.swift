import CRIUImages
import Foundation
import LinuxSupport
import PageServer
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Our server against a client that speaks exactly as CRIU 4.2's `criu lazy-pages --page-server` does: one
/// connection, one `PS_IOV_GET` at a time for a whole lazy run (asking again for the rest when the answer is
/// shorter), `PS_IOV_CLOSE` at the end, answered by an int32 status.
@Suite("Page server answering CRIU-style clients", .timeLimit(.minutes(2)))
struct CRIUClientTests {
    /// Fetches every lazy page of every task, checking each byte against the pattern; returns pages received.
    static func criuStyleSession(port: UInt16, images: RemoteImages) throws -> Int {
        let fd = try Wire.connect(port: port)
        defer { close(fd) }
        let set = try ImageSet(directory: images.clientDirectory)
        var received = 0
        for task in set.tasks {
            let pid = Int32(bitPattern: task.pid)
            let process = try set.process(pid: pid)
            for run in process.lazyRuns {
                var address = run.address
                var left = run.pageCount
                while left > 0 {
                    let request = PageServerMessage.get(pid: pid, address: address, pageCount: left)
                    try #require(Wire.send(fd, request.bytes))
                    let header = Wire.receive(fd, PageServerMessage.size)
                    try #require(header.count == PageServerMessage.size)
                    let reply = PageServerMessage(decoding: header)
                    #expect(reply.cmd == (PageServerFlags.present << 16 | PageServerCommand.addWithFlags))
                    let pages = try validateReply(reply, to: request)
                    let data = Wire.receive(fd, pages * basePageSize)
                    try #require(data.count == pages * basePageSize)
                    for i in 0..<pages {
                        let pageAddress = address + UInt64(i * basePageSize)
                        let index = (pageAddress - RemoteImages.base) / UInt64(basePageSize)
                        let ok = data[(i * basePageSize)..<((i + 1) * basePageSize)].withUnsafeBytes {
                            PagePattern.matches(seed: 0xabc + UInt64(pid), pageIndex: index, $0)
                        }
                        #expect(ok, "page \(String(pageAddress, radix: 16)) of pid \(pid)")
                    }
                    received += pages
                    address += UInt64(pages * basePageSize)
                    left -= pages
                }
            }
        }
        try #require(Wire.send(fd, PageServerMessage(cmd: PageServerCommand.close).bytes))
        let status = Wire.receive(fd, 4)
        #expect(status == [0, 0, 0, 0])
        return received
    }

    @Test("one CRIU-style client gets every lazy page, byte for byte, then a clean close")
    func oneClient() throws {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let pages = try Self.criuStyleSession(port: server.port, images: images)
        #expect(pages == 2 * RemoteImages.lazyPagesPerTask)
        #expect(server.counters.badCommands == 0)
    }

    @Test("several CRIU-style clients at once, each served every page")
    func severalClients() throws {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let results = ResultList()
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            results.append((try? Self.criuStyleSession(port: server.port, images: images)) ?? -1)
        }
        #expect(results.values == Array(repeating: 2 * RemoteImages.lazyPagesPerTask, count: 6))
        #expect(server.counters.connections == 6)
        #expect(server.counters.pagesSent == 6 * 2 * RemoteImages.lazyPagesPerTask)
    }

    @Test("a request past the end of a run is clamped; an unknown address or pid gets nr_pages 0, then that connection is closed")
    func clampAndUnknown() throws {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let fd = try Wire.connect(port: server.port)
        defer { close(fd) }
        // VMA B holds 96 lazy pages: ask for 200 from its 90th page.
        let b = RemoteImages.base + 0x20_0000
        let clamped = PageServerMessage.get(pid: 1, address: b + 90 * 4096, pageCount: 200)
        try #require(Wire.send(fd, clamped.bytes))
        let reply = PageServerMessage(decoding: Wire.receive(fd, 32))
        #expect(reply == .pages(answering: clamped, pageCount: 6))
        #expect(Wire.receive(fd, 6 * 4096).count == 6 * 4096)
        let again = PageServerMessage.get(pid: 2, address: b, pageCount: 4)
        try #require(Wire.send(fd, again.bytes))
        #expect(PageServerMessage(decoding: Wire.receive(fd, 32)) == .pages(answering: again, pageCount: 4))
        #expect(Wire.receive(fd, 4 * 4096).count == 4 * 4096)
        // An unknown address or pid: answered nr_pages 0, then that connection is closed (as CRIU's server closes
        // it), so a client scanning for pages pays a connection per miss.
        for unknown in [PageServerMessage.get(pid: 1, address: RemoteImages.base + 230 * 4096, pageCount: 1),
                        PageServerMessage.get(pid: 77, address: b, pageCount: 1)] {
            let probe = try Wire.connect(port: server.port)
            defer { close(probe) }
            try #require(Wire.send(probe, unknown.bytes + again.bytes))
            #expect(PageServerMessage(decoding: Wire.receive(probe, 32)) == .pages(answering: unknown, pageCount: 0))
            #expect(Wire.receive(probe, 1).isEmpty, "the connection must be closed after an unknown address")
        }
        #expect(server.counters.unknownAddresses == 2)
    }

    @Test("a garbage command closes that connection only; others keep being served")
    func garbageCommand() throws {
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let good = try Wire.connect(port: server.port)
        defer { close(good) }
        let bad = try Wire.connect(port: server.port)
        defer { close(bad) }
        try #require(Wire.send(bad, PageServerMessage(cmd: 0x7777, pageCount: 1, address: 0, destination: 1).bytes))
        #expect(Wire.receive(bad, 1).isEmpty)  // closed by the server
        #expect(server.counters.badCommands == 1)
        let request = PageServerMessage.get(pid: 1, address: RemoteImages.base, pageCount: 2)
        try #require(Wire.send(good, request.bytes))
        #expect(PageServerMessage(decoding: Wire.receive(good, 32)) == .pages(answering: request, pageCount: 2))
        #expect(Wire.receive(good, 2 * 4096).count == 2 * 4096)
    }
}

final class ResultList: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Int] = []
    func append(_ value: Int) { lock.withLock { items.append(value) } }
    var values: [Int] { lock.withLock { items } }
}
