import CGnuTLS
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The X.509 credentials of one end (GnuTLS), loaded with CRIU's rules (`tls_x509_setup_creds`): the trusted CAs
/// (the system store plus CRIU's default file, or exactly `--tls-cacert`), the revocation list if there is one,
/// and our certificate with its key. Shared by every session of a server; immutable once loaded.
public final class TLSCredentials: @unchecked Sendable {
    let handle: gnutls_certificate_credentials_t
    public let options: TLSOptions

    public init(_ options: TLSOptions, logger: Logger) throws(PageServerError) {
        self.options = options
        var handle: gnutls_certificate_credentials_t?
        try Self.check(gnutls_certificate_allocate_credentials(&handle), "cannot allocate TLS credentials")
        self.handle = handle!
        let pem = GNUTLS_X509_FMT_PEM

        if let file = options.caCertificate {
            let added = gnutls_certificate_set_x509_trust_file(self.handle, file, pem)
            guard added > 0 else {
                throw PageServerError(.configuration, "--tls-cacert \(file): "
                    + (added < 0 ? Self.text(added) : "no CA certificate in the file"))
            }
        } else {
            let system = gnutls_certificate_set_x509_system_trust(self.handle)
            if system < 0 { logger.info("no system trust store", metadata: ["error": "\(Self.text(system))"]) }
            let added = gnutls_certificate_set_x509_trust_file(self.handle, TLSOptions.defaultCACertificate, pem)
            if added <= 0 {
                logger.info("no CA certificate added from the default file", metadata: [
                    "file": "\(TLSOptions.defaultCACertificate)", "error": "\(added < 0 ? Self.text(added) : "empty")",
                ])
            }
        }

        let crl = options.revocationList ?? TLSOptions.defaultRevocationList
        if access(crl, R_OK) == 0 {
            let rc = gnutls_certificate_set_x509_crl_file(self.handle, crl, pem)
            guard rc >= 0 else { throw PageServerError(.configuration, "--tls-cacrl \(crl): \(Self.text(rc))") }
        } else if options.revocationList != nil {
            throw PageServerError(.configuration, "--tls-cacrl \(crl): cannot read: \(SystemCallError.reason())")
        }

        let certificate = options.certificate ?? TLSOptions.defaultCertificate
        let key = options.key ?? TLSOptions.defaultKey
        let rc = gnutls_certificate_set_x509_key_file(self.handle, certificate, key, pem)
        guard rc == GNUTLS_E_SUCCESS else {
            throw PageServerError(.configuration, "cannot load the TLS certificate \(certificate) with the key \(key): \(Self.text(rc))")
        }
    }

    deinit { gnutls_certificate_free_credentials(handle) }

    static func text(_ code: Int32) -> String { String(cString: gnutls_strerror(code)) }

    static func check(_ code: Int32, _ what: String) throws(PageServerError) {
        guard code == GNUTLS_E_SUCCESS else { throw PageServerError(.configuration, "\(what): \(text(code))") }
    }
}
