import Foundation
import LazyPagesEngine
import PageServer
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// TLS between our page server and our client (GnuTLS, CRIU's options and checks): a real restore over it, then
/// each kind of bad peer refused with a reason that names it. The interop with CRIU's own GnuTLS ends is in
/// `CRIUTLSTests`.
@Suite("TLS between our page server and our client", .serialized, .timeLimit(.minutes(20)),
       .enabled(if: TestCertificates.openssl != nil, "needs openssl to make the test certificates"))
struct TLSTests {
    static func credentials(_ identity: TestCertificates.Identity, ca: String, verifyName: Bool = true) throws -> TLSCredentials {
        try TLSCredentials(TLSOptions(caCertificate: ca, certificate: identity.certificate, key: identity.key,
                                      verifyName: verifyName), logger: remoteLogger)
    }

    /// Our page server over `images` with `identity` (default: the test CA's server certificate), started (stop it).
    static func startServer(_ images: RemoteImages, _ certificates: TestCertificates,
                            as identity: TestCertificates.Identity? = nil) throws -> PageServer {
        let server = try PageServer(
            directory: images.serverDirectory, host: "127.0.0.1", port: 0,
            tls: credentials(identity ?? certificates.server, ca: certificates.caCertificate), logger: remoteLogger)
        server.start()
        return server
    }

    @Test("a restore over TLS: every byte checked, client certificate verified by the server")
    func restoreOverTLS() async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try RemoteImages()
        let server = try Self.startServer(images, certificates)
        defer { server.stop() }
        let clientTLS = try Self.credentials(certificates.client, ca: certificates.caCertificate)
        let result = try remoteRestore(images, port: server.port, scenario: "fork-storm") { $0.tls = clientTLS }
        #expect(result.report.allPassed, "\(describe(result.report))")
        #expect(result.outcome == .completed)
        #expect(result.closeStatus == 0)
        #expect(server.counters.tlsFailures == 0)
        #expect(server.counters.pagesSent >= 2 * RemoteImages.lazyPagesPerTask)
    }}

    /// Starts a client session against `port` and returns why it failed (nil: it did not).
    static func clientFailure(port: UInt16, tls: TLSCredentials?) -> String? {
        var options = PageServerClientOptions(host: "127.0.0.1", port: port)
        options.tls = tls
        options.retries = 1
        options.retryDelay = 0.05
        options.stallTimeout = 5
        let client = PageServerClient(options: options, logger: remoteLogger)
        do {
            let engine = try RestoreEngine(logger: remoteLogger)
            try client.start(engine: engine)
            client.close()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("the client refuses a server certificate that is untrusted, expired or for another name",
          arguments: ["untrusted", "expired", "wrong-name"])
    func clientRefusesBadServer(_ kind: String) async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try RemoteImages()
        let identity = [
            "untrusted": certificates.untrusted, "expired": certificates.expired, "wrong-name": certificates.wrongName,
        ][kind]!
        let server = try Self.startServer(images, certificates, as: identity)
        defer { server.stop() }
        let failure = Self.clientFailure(
            port: server.port, tls: try Self.credentials(certificates.client, ca: certificates.caCertificate))
        let reason = try #require(failure, "the client accepted a server with a bad certificate (\(kind))")
        #expect(reason.contains("page server 127.0.0.1:\(server.port)"), "\(reason)")
        #expect(reason.contains("certificate is refused"), "\(reason)")
        let words = ["untrusted": "NOT trusted", "expired": "expired", "wrong-name": "does not match"][kind]!
        #expect(reason.contains(words), "\(reason)")
    }}

    @Test("--tls-no-cn-verify accepts another name, but never an untrusted chain")
    func noNameCheck() async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try RemoteImages()
        for (identity, accepted) in [(certificates.wrongName, true), (certificates.untrusted, false)] {
            let server = try Self.startServer(images, certificates, as: identity)
            defer { server.stop() }
            let failure = Self.clientFailure(
                port: server.port,
                tls: try Self.credentials(certificates.client, ca: certificates.caCertificate, verifyName: false))
            #expect((failure == nil) == accepted, "\(identity.certificate): \(failure ?? "accepted")")
        }
    }}

    @Test("a TLS client meeting a plain-text server fails, naming the server and the likely cause")
    func plainServer() async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try RemoteImages()
        let server = try PageServer(directory: images.serverDirectory, host: "127.0.0.1", port: 0, logger: remoteLogger)
        server.start()
        defer { server.stop() }
        let reason = try #require(Self.clientFailure(
            port: server.port, tls: try Self.credentials(certificates.client, ca: certificates.caCertificate)))
        #expect(reason.contains("page server 127.0.0.1:\(server.port)"), "\(reason)")
        #expect(reason.contains("does the peer speak TLS"), "\(reason)")
    }}

    @Test("the server refuses a plain-text client and client certificates that are untrusted or expired",
          arguments: ["plain", "untrusted", "expired"])
    func serverRefusesBadClient(_ kind: String) async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let images = try RemoteImages()
        let server = try Self.startServer(images, certificates)
        defer { server.stop() }
        if kind == "plain" {
            // A plain client's first request is not a TLS ClientHello: the server closes without a byte of pages.
            let fd = try Wire.connect(port: server.port)
            defer { close(fd) }
            #expect(Wire.send(fd, PageServerMessage.get(pid: 1, address: RemoteImages.base, pageCount: 1).bytes))
            #expect(Wire.receive(fd, 1).isEmpty)
        } else {
            let identity = kind == "untrusted" ? certificates.untrusted : certificates.expired
            // The handshake may complete on the client's side (TLS 1.3 verifies the client last); its first
            // request then meets the server's alert, and the restore fails naming the server.
            let tls = try Self.credentials(identity, ca: certificates.caCertificate)
            let reason: String
            do {
                let result = try remoteRestore(images, port: server.port, scenario: "verify", configure: {
                    $0.tls = tls
                    $0.retries = 1
                })
                guard case .failed(let why) = result.outcome else {
                    Issue.record("a client with a bad certificate (\(kind)) was served: \(result.outcome)")
                    return
                }
                #expect(result.statistics[.remotePagesReceived] == 0)
                reason = why
            } catch {
                reason = "\(error)"
            }
            #expect(reason.contains("127.0.0.1:\(server.port)"), "\(reason)")
            #expect(reason.contains("Certificate is bad"), "\(reason)")
        }
        #expect(server.counters.tlsFailures >= 1)
        #expect(server.counters.pagesSent == 0)
    }}

    @Test("a missing CA file, certificate or key is a clear error at start")
    func badFiles() async throws { try await oneHeavyTestAtATime {
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let missing = certificates.directory + "/missing.pem"
        let cases: [(TLSOptions, String)] = [
            (TLSOptions(caCertificate: missing, certificate: certificates.client.certificate, key: certificates.client.key), "--tls-cacert"),
            (TLSOptions(caCertificate: certificates.caCertificate, certificate: missing, key: certificates.client.key), missing),
            (TLSOptions(caCertificate: certificates.caCertificate, revocationList: missing,
                        certificate: certificates.client.certificate, key: certificates.client.key), "--tls-cacrl"),
        ]
        for (options, named) in cases {
            #expect {
                _ = try TLSCredentials(options, logger: remoteLogger)
            } throws: { error in
                "\(error)".contains(named)
            }
        }
    }}
}
