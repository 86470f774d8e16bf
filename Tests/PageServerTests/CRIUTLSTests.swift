import CRIUImages
import Foundation
import LinuxSupport
import PageServer
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The reference CRIU 4.2 (built by `../shared/criu/build-criu`).
let criuBinary = "/var/tmp/lazy-pages-criu-4.2/criu-4.2/criu/criu"
let criuAvailable = access(criuBinary, X_OK) == 0

/// CRIU's page server needs pipes of 4 MiB (`fs.pipe-max-size`); raised here if lower (root only; harmless).
func ensurePipeMaxSize() {
    let path = "/proc/sys/fs/pipe-max-size"
    let current = (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
    if current < 4_194_304 { try? "4194304\n".write(toFile: path, atomically: false, encoding: .utf8) }
}

/// `criu page-server --lazy-pages -d` on a copy of a dump: started and listening when `init` returns (CRIU's
/// parent exits once the daemon is ready). It serves one connection and exits.
final class CRIUPageServer {
    let directory: String
    let port: UInt16
    let pid: pid_t
    var log: String { (try? String(contentsOfFile: directory + "/page-server.log", encoding: .utf8)) ?? "" }

    init(images: String, arguments: [String]) throws {
        ensurePipeMaxSize()
        directory = try makeTemporaryDirectory()
        port = try freeLoopbackPort()
        let out = try Spawn.run([
            criuBinary, "page-server", "--lazy-pages", "-D", images, "-W", directory, "--address", "127.0.0.1",
            "--port", String(port), "-d", "--pidfile", directory + "/pid", "-o", "page-server.log", "-v4",
        ] + arguments)
        let pidText = (try? String(contentsOfFile: directory + "/pid", encoding: .utf8)) ?? ""
        guard out.exitCode == 0, let pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw CertificateError("criu page-server did not start (\(out.status)): \(out.stderr) \((try? String(contentsOfFile: directory + "/page-server.log", encoding: .utf8)) ?? "")")
        }
        self.pid = pid
    }

    deinit {
        kill(pid, SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Waits (bounded) for the daemon to exit (it is not our child: polled).
    func waitForExit(timeout: Double = 20) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        while ContinuousClock.now < deadline {
            if kill(pid, 0) != 0 { return true }
            usleep(20_000)
        }
        return false
    }
}

/// A blocking client over `TCPConnection` (poll on would-block), for speaking the page-server protocol by hand.
struct BlockingWire {
    let connection: TCPConnection

    init(port: UInt16, tls: TLSCredentials?, verifyName: Bool = true) throws {
        let fd = try TCPSocket.connect(host: "127.0.0.1", port: port, timeoutSeconds: 5)
        connection = TCPConnection(descriptor: fd, peer: "page server 127.0.0.1:\(port)")
        if let tls {
            try connection.startTLS(server: false, credentials: tls)
            try connection.handshake(timeout: 10, hostname: tls.options.verifyName ? "127.0.0.1" : nil)
        }
    }

    private func wait(_ events: Int32) {
        var entry = pollfd(fd: connection.descriptor, events: Int16(events), revents: 0)
        _ = poll(&entry, 1, 20_000)
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count || connection.hasPendingOutput {
            let result = sent < bytes.count
                ? bytes.withUnsafeBytes { connection.send($0.baseAddress! + sent, $0.count - sent) }
                : connection.flush()
            switch result {
            case .done(let n): sent += n
            case .wouldBlock: wait(POLLOUT)
            case .closed: throw CertificateError("closed while sending")
            case .failed(let reason), .refused(let reason): throw CertificateError(reason)
            }
        }
    }

    /// Exactly `count` bytes, or what came before the end of the connection (with the reason it ended).
    func receive(_ count: Int) -> (bytes: [UInt8], end: String?) {
        var out = [UInt8](repeating: 0, count: count)
        var have = 0
        var idle = 0
        while have < count {
            let result = out.withUnsafeMutableBytes { connection.receive($0.baseAddress! + have, count - have) }
            switch result {
            case .done(let n):
                have += n
                idle = 0
            case .wouldBlock:
                idle += 1
                if idle > 3 { return (Array(out[0..<have]), "no data for 60 s") }
                wait(POLLIN)
            case .closed: return (Array(out[0..<have]), "closed")
            case .failed(let reason), .refused(let reason): return (Array(out[0..<have]), reason)
            }
        }
        return (out, nil)
    }
}

/// TLS with CRIU 4.2's own GnuTLS ends, at the wire: `criu page-server --lazy-pages --tls` serving the real CRIU
/// dump in `../shared/fixtures/criu-treeproc` to our TLS transport (every lazy page checked byte for byte against
/// the dump's pages files), and each bad certificate refused on the side that checks it. (Whole restores over TLS
/// with `criu restore --lazy-pages` are in the end-to-end tests.)
@Suite("TLS against CRIU's page server", .serialized, .timeLimit(.minutes(20)),
       .enabled(if: criuAvailable, "needs the reference CRIU at \(criuBinary)"),
       .enabled(if: TestCertificates.openssl != nil, "needs openssl to make the test certificates"))
struct CRIUTLSTests {
    static let fixture = "/work/shared/fixtures/criu-treeproc"

    /// A copy of the fixture dump (CRIU's page server must not touch the shared one).
    static func fixtureCopy() throws -> String {
        let directory = try makeTemporaryDirectory() + "/images"
        try FileManager.default.copyItem(atPath: fixture, toPath: directory)
        return directory
    }

    static func tlsArguments(_ identity: TestCertificates.Identity, ca: String, noNameCheck: Bool = false) -> [String] {
        ["--tls", "--tls-cacert", ca, "--tls-cert", identity.certificate, "--tls-key", identity.key]
            + (noNameCheck ? ["--tls-no-cn-verify"] : [])
    }

    static func credentials(_ identity: TestCertificates.Identity, ca: String, verifyName: Bool = true) throws -> TLSCredentials {
        try TLSCredentials(TLSOptions(caCertificate: ca, certificate: identity.certificate, key: identity.key,
                                      verifyName: verifyName), logger: remoteLogger)
    }

    @Test("criu page-server --tls serves every lazy page of a real dump to our TLS client, byte for byte",
          .enabled(if: FileManager.default.fileExists(atPath: fixture), "needs the fixture dump"))
    func criuServerToOurClient() async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try Self.fixtureCopy()
        let truth = try ServedImages(directory: images)
        let server = try CRIUPageServer(images: images, arguments: Self.tlsArguments(certificates.server, ca: certificates.caCertificate))
        let wire = try BlockingWire(port: server.port, tls: try Self.credentials(certificates.client, ca: certificates.caCertificate))
        var pages = 0
        for pid in truth.runs.keys.sorted() {
            for run in truth.runs[pid]! {
                var address = run.address
                var left = UInt64(run.pageCount)
                while left > 0 {
                    let request = PageServerMessage.get(pid: pid, address: address, pageCount: Int(left))
                    try wire.send(request.bytes)
                    let header = wire.receive(PageServerMessage.size)
                    try #require(header.end == nil, "pid \(pid) 0x\(String(address, radix: 16)): \(header.end!) \(server.log.suffix(1500))")
                    let count = try validateReply(PageServerMessage(decoding: header.bytes), to: request)
                    let data = wire.receive(count * basePageSize)
                    try #require(data.end == nil, "\(data.end!)")
                    let stored = try #require(truth.locate(pid: pid, address: address, maxPages: UInt64(count)))
                    var expected = [UInt8](repeating: 0, count: count * basePageSize)
                    _ = expected.withUnsafeMutableBytes { pread(stored.descriptor, $0.baseAddress, $0.count, off_t(stored.offset)) }
                    #expect(data.bytes == expected, "pid \(pid) 0x\(String(address, radix: 16)) x\(count)")
                    pages += count
                    address += UInt64(count * basePageSize)
                    left -= UInt64(count)
                }
            }
        }
        try wire.send(PageServerMessage(cmd: PageServerCommand.close).bytes)
        #expect(wire.receive(4).bytes == [0, 0, 0, 0])
        wire.connection.close()
        #expect(pages == truth.pageCount && pages == 2 * 1099, "\(pages) pages")
        #expect(server.waitForExit())
        #expect(server.log.contains("TLS handshake completed"), "\(server.log.suffix(2000))")
    }}

    @Test("our client refuses CRIU's page server with an untrusted, expired or wrong-name certificate, or without TLS",
          arguments: ["untrusted", "expired", "wrong-name", "plain"])
    func ourClientRefusesCRIUServer(_ kind: String) async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try Self.fixtureCopy()
        let identity = ["untrusted": certificates.untrusted, "expired": certificates.expired,
                        "wrong-name": certificates.wrongName, "plain": certificates.server][kind]!
        // CRIU's server checks our client's certificate too; it is a good one, so any refusal is ours.
        let server = try CRIUPageServer(
            images: images, arguments: kind == "plain" ? [] : Self.tlsArguments(identity, ca: certificates.caCertificate))
        let failure: String
        do {
            _ = try BlockingWire(port: server.port, tls: try Self.credentials(certificates.client, ca: certificates.caCertificate))
            Issue.record("our client accepted CRIU's page server with \(kind)")
            return
        } catch {
            failure = "\(error)"
        }
        #expect(failure.contains("page server 127.0.0.1:\(server.port)"), "\(failure)")
        let words = ["untrusted": "NOT trusted", "expired": "expired", "wrong-name": "does not match",
                     "plain": "does the peer speak TLS"][kind]!
        #expect(failure.contains(words), "\(failure)")
    }}

    @Test("CRIU's page server refuses our client with an untrusted or expired certificate, or without TLS",
          arguments: ["untrusted", "expired", "plain"])
    func criuServerRefusesOurClient(_ kind: String) async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try Self.fixtureCopy()
        let server = try CRIUPageServer(images: images, arguments: Self.tlsArguments(certificates.server, ca: certificates.caCertificate))
        let identity = kind == "untrusted" ? certificates.untrusted : certificates.expired
        let tls = kind == "plain" ? nil : try Self.credentials(identity, ca: certificates.caCertificate)
        // The handshake may finish on our side (TLS 1.3 checks the client last); not one page may come.
        if let wire = try? BlockingWire(port: server.port, tls: tls) {
            try? wire.send(PageServerMessage.get(pid: 13288, address: 0x7f8b_b260_0000, pageCount: 1).bytes)
            let reply = wire.receive(PageServerMessage.size + basePageSize)
            #expect(reply.end != nil && reply.bytes.count < PageServerMessage.size, "served: \(reply.bytes.count) bytes")
        }
        #expect(server.waitForExit())
        let words = kind == "plain" ? "TLS handshake failed" : "Invalid certificate"
        #expect(server.log.contains(words), "\(server.log.suffix(1500))")
    }}
}
