import ArgumentParser
import Logging
import PageServer

/// CRIU's `--tls*` options, one definition for both ends of the page-server protocol (`lazy-pagesd --page-server`
/// and `lazy-pages page-server`), with CRIU's spellings and defaults (`criu/config.c`, `criu/tls.c`). As in CRIU,
/// the file options mean nothing without `--tls`.
public struct TLSOptionGroup: ParsableArguments {
    @Flag(name: .customLong("tls"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: "Speak TLS with the page-server peer (X.509 certificates on both ends, as `criu --tls`).")
    public var enabled = false

    @Option(name: .customLong("tls-cacert"),
            help: "Trusted CA certificates (PEM; default: the system's trust store plus \(TLSOptions.defaultCACertificate)).")
    public var caCertificate: String?

    @Option(name: .customLong("tls-cacrl"),
            help: "A certificate revocation list (PEM; default: \(TLSOptions.defaultRevocationList) if it exists).")
    public var revocationList: String?

    @Option(name: .customLong("tls-cert"), help: "Our certificate (PEM; default: \(TLSOptions.defaultCertificate)).")
    public var certificate: String?

    @Option(name: .customLong("tls-key"), help: "Our private key (PEM; default: \(TLSOptions.defaultKey)).")
    public var key: String?

    @Flag(name: .customLong("tls-no-cn-verify"),
          help: "Do not check the peer certificate's name against the address (its chain is still verified).")
    public var noNameCheck = false

    public init() {}

    /// The options, or nil without `--tls`.
    public var options: TLSOptions? {
        guard enabled else { return nil }
        return TLSOptions(caCertificate: caCertificate, revocationList: revocationList, certificate: certificate,
                          key: key, verifyName: !noNameCheck)
    }

    /// The credentials, loaded now so that a missing or bad file fails at start; nil without `--tls`.
    public func credentials(logger: Logger) throws(PageServerError) -> TLSCredentials? {
        try options.map { (options) throws(PageServerError) in try TLSCredentials(options, logger: logger) }
    }
}
