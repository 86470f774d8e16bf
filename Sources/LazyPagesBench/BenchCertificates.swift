import Foundation

/// X.509 material for the `remote-tls` workload of the `criu` step, made with `openssl` in `directory`: a CA, and a
/// server and a client certificate it signed for 127.0.0.1 (CN and subjectAltName, so CRIU's and our name checks
/// pass). Both page-server pairs are given the same files.
struct BenchCertificates {
    let directory: String
    var caCertificate: String { directory + "/ca.pem" }

    init(directory: String, openssl: String = "/usr/bin/openssl") throws {
        guard access(openssl, X_OK) == 0 else {
            throw BenchError("the remote-tls workload needs \(openssl) to make its certificates")
        }
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func run(_ arguments: [String]) throws {
            let child = try ChildProcess(
                path: openssl, arguments: arguments, stdoutPath: directory + "/openssl.out",
                stderrPath: directory + "/openssl.err")
            let status = try child.waitForExit().status
            guard status == 0 else {
                throw BenchError("openssl \(arguments.joined(separator: " ")) exited \(status): \(child.errors().suffix(500))")
            }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        try run(["req", "-x509"] + ec + ["-keyout", directory + "/ca.key", "-out", caCertificate, "-days", "2",
                 "-subj", "/CN=lazy-pages bench ca", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        let extensions = directory + "/leaf.ext"
        try "subjectAltName=IP:\(PageServerRun.address)\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            .write(toFile: extensions, atomically: true, encoding: .utf8)
        for name in ["server", "client"] {
            try run(["req"] + ec + ["-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr",
                     "-subj", "/CN=\(PageServerRun.address)"])
            try run(["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", caCertificate,
                     "-CAkey", directory + "/ca.key", "-CAcreateserial", "-out", "\(directory)/\(name).pem",
                     "-days", "2", "-extfile", extensions])
        }
    }

    /// `--tls --tls-cacert --tls-cert --tls-key` for one end (`server` or `client`), the same for CRIU and ours.
    func arguments(_ end: String) -> [String] {
        ["--tls", "--tls-cacert", caCertificate, "--tls-cert", "\(directory)/\(end).pem",
         "--tls-key", "\(directory)/\(end).key"]
    }

    var serverArguments: [String] { arguments("server") }
    var clientArguments: [String] { arguments("client") }
}
