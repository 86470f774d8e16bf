import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// X.509 material for the TLS tests, made at test time with `openssl` (Debian package `openssl`) in a temporary
/// directory: a CA; server and client certificates it signed for 127.0.0.1 (CN and subjectAltName); and the bad
/// ones: a certificate from a second CA nobody trusts, an expired one, and one naming another host.
public struct TestCertificates {
    public let directory: String
    public var caCertificate: String { directory + "/ca.pem" }
    public var revocationList: String { directory + "/crl.pem" }

    /// A certificate and its key.
    public struct Identity {
        public let certificate: String
        public let key: String
    }

    public var server: Identity { identity("server") }
    public var client: Identity { identity("client") }
    /// Signed by `other-ca`, which no test trusts.
    public var untrusted: Identity { identity("untrusted") }
    /// Signed by the CA, valid until yesterday.
    public var expired: Identity { identity("expired") }
    /// Signed by the CA for `wrong.example`.
    public var wrongName: Identity { identity("wrong-name") }

    private func identity(_ name: String) -> Identity {
        Identity(certificate: "\(directory)/\(name).pem", key: "\(directory)/\(name).key")
    }

    public static var openssl: String? { Spawn.tool("/usr/bin/openssl", "/bin/openssl") }

    public init() throws {
        guard let openssl = Self.openssl else { throw CertificateError("openssl is not installed") }
        directory = try TestScratch.makeDirectory("lp-tls")  // removed at exit at the latest
        let dir = directory
        func run(_ arguments: [String]) throws {
            let out = try Spawn.run([openssl] + arguments)
            guard out.exitCode == 0 else {
                throw CertificateError("openssl \(arguments.joined(separator: " ")): \(out.stderr)")
            }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for ca in ["ca", "other-ca"] {
            try run(["req", "-x509"] + ec + ["-keyout", "\(dir)/\(ca).key", "-out", "\(dir)/\(ca).pem", "-days", "2",
                     "-subj", "/CN=lazy-pages test \(ca)", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        }
        let leaves: [(name: String, host: String, ca: String, days: String)] = [
            ("server", "127.0.0.1", "ca", "2"), ("client", "127.0.0.1", "ca", "2"),
            ("untrusted", "127.0.0.1", "other-ca", "2"), ("expired", "127.0.0.1", "ca", "-1"),
            ("wrong-name", "wrong.example", "ca", "2"),
        ]
        for leaf in leaves {
            let san = leaf.host.first!.isNumber ? "IP:\(leaf.host)" : "DNS:\(leaf.host)"
            try "subjectAltName=\(san)\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
                .write(toFile: "\(dir)/\(leaf.name).ext", atomically: true, encoding: .utf8)
            try run(["req"] + ec + ["-keyout", "\(dir)/\(leaf.name).key", "-out", "\(dir)/\(leaf.name).csr",
                     "-subj", "/CN=\(leaf.host)"])
            try run(["x509", "-req", "-in", "\(dir)/\(leaf.name).csr", "-CA", "\(dir)/\(leaf.ca).pem",
                     "-CAkey", "\(dir)/\(leaf.ca).key", "-CAcreateserial", "-out", "\(dir)/\(leaf.name).pem",
                     "-days", leaf.days, "-extfile", "\(dir)/\(leaf.name).ext"])
        }
    }

    /// Removes the directory.
    public func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

public struct CertificateError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
