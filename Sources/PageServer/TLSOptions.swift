/// TLS for the page-server protocol, as CRIU's `--tls*` options configure it (`criu/tls.c`): X.509 certificates
/// on both ends, the peer verified against the CA, and its name against the address unless `--tls-no-cn-verify`.
public struct TLSOptions: Sendable, Equatable {
    /// CRIU's default files (`SYSCONFDIR/pki/...` with `SYSCONFDIR = /etc`).
    public static let defaultCACertificate = "/etc/pki/CA/cacert.pem"
    public static let defaultRevocationList = "/etc/pki/CA/cacrl.pem"
    public static let defaultCertificate = "/etc/pki/criu/cert.pem"
    public static let defaultKey = "/etc/pki/criu/private/key.pem"

    /// `--tls-cacert`: the trusted CAs (PEM). Nil: the system's trust store plus `defaultCACertificate` if it
    /// holds any; given: it must hold at least one CA.
    public var caCertificate: String?
    /// `--tls-cacrl`: a certificate revocation list (PEM). Nil: `defaultRevocationList` if readable; given: it
    /// must be readable.
    public var revocationList: String?
    /// `--tls-cert`, `--tls-key`: our certificate and its private key (PEM); both must load.
    public var certificate: String?
    public var key: String?
    /// False with `--tls-no-cn-verify`: the peer's certificate must still chain to a trusted CA, but its name is
    /// not checked.
    public var verifyName = true

    public init(caCertificate: String? = nil, revocationList: String? = nil, certificate: String? = nil,
                key: String? = nil, verifyName: Bool = true) {
        self.caCertificate = caCertificate
        self.revocationList = revocationList
        self.certificate = certificate
        self.key = key
        self.verifyName = verifyName
    }
}
