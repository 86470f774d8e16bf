import CGnuTLS

#if canImport(Glibc)
import Glibc
#endif

/// One GnuTLS session over a non-blocking TCP socket, set up as CRIU's `tls_x509_setup_session` does: the default
/// priorities, our credentials, and on the server side a client certificate required (and our CA names not
/// advertised). Handshake and records are driven step by step, so the same session works in an event loop (the
/// page server) and in a blocking call with a deadline (the client's connect).
final class TLSSession {
    enum Role { case client, server }

    enum Step: Equatable {
        case done
        /// Try again once the socket is readable (`wantsWrite` false) or writable (true).
        case again
        case failed(String)
    }

    private let session: gnutls_session_t
    private let credentials: TLSCredentials
    let role: Role

    init(descriptor: Int32, role: Role, credentials: TLSCredentials) throws(PageServerError) {
        var session: gnutls_session_t?
        let flags = UInt32(role == .server ? GNUTLS_SERVER : GNUTLS_CLIENT) | UInt32(GNUTLS_NONBLOCK) | UInt32(GNUTLS_NO_SIGNAL)
        try TLSCredentials.check(gnutls_init(&session, flags), "cannot start a TLS session")
        self.session = session!
        self.credentials = credentials
        self.role = role
        try TLSCredentials.check(gnutls_credentials_set(self.session, GNUTLS_CRD_CERTIFICATE, UnsafeMutableRawPointer(credentials.handle)),
                                 "cannot set the TLS credentials")
        try TLSCredentials.check(gnutls_set_default_priority(self.session), "cannot set the TLS priorities")
        CGnuTLS_transport_set_int(self.session, descriptor)
        if role == .server {
            gnutls_certificate_server_set_request(self.session, GNUTLS_CERT_REQUIRE)
            gnutls_certificate_send_x509_rdn_sequence(self.session, 1)
        }
    }

    deinit { gnutls_deinit(session) }

    /// Whether the step that returned `.again` waits for the socket to become writable.
    var wantsWrite: Bool { gnutls_record_get_direction(session) == 1 }

    func handshake() -> Step {
        let rc = gnutls_handshake(session)
        if rc == GNUTLS_E_SUCCESS { return .done }
        if rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED { return .again }
        if gnutls_error_is_fatal(rc) == 0 { return .again }  // a warning alert: keep going, as CRIU does
        if rc == GNUTLS_E_FATAL_ALERT_RECEIVED { return .failed("the peer sent the alert '\(alertName)'") }
        return .failed(Self.describe(rc, handshake: true))
    }

    /// Verifies the peer's certificate chain against our CAs (validity dates and revocation included) and, when
    /// `hostname` is given, its name against it. Nil when it is trusted, else why not.
    func verifyPeer(hostname: String?) -> String? {
        var status: UInt32 = 0
        let rc = gnutls_certificate_verify_peers3(session, hostname, &status)
        guard rc == GNUTLS_E_SUCCESS else { return "cannot verify the peer's certificate: \(TLSCredentials.text(rc))" }
        guard status != 0 else { return nil }
        var out = gnutls_datum_t()
        let type = gnutls_certificate_type_get(session)
        guard gnutls_certificate_verification_status_print(status, type, &out, 0) == 0, let data = out.data else {
            return "the peer's certificate is not trusted (status 0x\(String(status, radix: 16)))"
        }
        let text = String(cString: UnsafeRawPointer(data).assumingMemoryBound(to: CChar.self))
        CGnuTLS_free_datum(&out)
        return text
    }

    /// One record of at most `count` bytes. On `GNUTLS_E_AGAIN` the record is already encrypted and queued in the
    /// session: it counts as sent, and `flush()` pushes it out before anything else is sent.
    func send(_ bytes: UnsafeRawPointer, _ count: Int) -> TCPConnection.IO {
        if pendingFlush {
            switch flush() {
            case .done: break
            case let other: return other
            }
        }
        let chunk = min(count, Self.maxRecord)
        let rc = gnutls_record_send(session, bytes, chunk)
        if rc == Int(GNUTLS_E_AGAIN) || rc == Int(GNUTLS_E_INTERRUPTED) {
            pendingFlush = true
            return .done(chunk)
        }
        guard rc > 0 else { return .failed("TLS send failed: \(Self.describe(Int32(truncatingIfNeeded: rc)))") }
        return .done(rc)
    }

    private(set) var pendingFlush = false

    /// Pushes out a record queued by an earlier `send`; `.done(0)` when nothing is left.
    func flush() -> TCPConnection.IO {
        guard pendingFlush else { return .done(0) }
        let rc = gnutls_record_send(session, nil, 0)
        if rc == Int(GNUTLS_E_AGAIN) || rc == Int(GNUTLS_E_INTERRUPTED) { return .wouldBlock }
        guard rc >= 0 else { return .failed("TLS send failed: \(Self.describe(Int32(truncatingIfNeeded: rc)))") }
        pendingFlush = false
        return .done(0)
    }

    func receive(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> TCPConnection.IO {
        let rc = gnutls_record_recv(session, buffer, count)
        if rc > 0 { return .done(rc) }
        if rc == 0 { return .closed }
        if rc == Int(GNUTLS_E_AGAIN) || rc == Int(GNUTLS_E_INTERRUPTED) { return .wouldBlock }
        if rc == Int(GNUTLS_E_PREMATURE_TERMINATION) { return .closed }
        if rc == Int(GNUTLS_E_FATAL_ALERT_RECEIVED) {
            return .refused("the peer ended the TLS session with the alert '\(alertName)'")
        }
        return .failed("TLS receive failed: \(Self.describe(Int32(truncatingIfNeeded: rc)))")
    }

    /// Decrypted bytes waiting in the session (the socket may be empty: epoll will not report them).
    var pendingInput: Int { gnutls_record_check_pending(session) }

    /// The last alert the peer sent, in GnuTLS's words ("Certificate is bad", ...).
    var alertName: String {
        gnutls_alert_get_name(gnutls_alert_get(session)).map { String(cString: $0) } ?? "unknown alert"
    }

    /// Tells the peer its certificate was refused (a fatal alert), so that it learns why we close.
    func refuseCertificate() { _ = gnutls_alert_send(session, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE) }

    /// Sends our close_notify without waiting for the peer's (as CRIU does after an error).
    func bye() { _ = gnutls_bye(session, GNUTLS_SHUT_WR) }

    /// The plaintext bytes of one record at most (TLS's limit).
    static let maxRecord = 16384

    /// GnuTLS's words, plus what they most likely mean for errors a peer without TLS provokes.
    /// (In a handshake, a peer that resets or closes the connection, or answers with something that is not TLS,
    /// is most likely one without TLS.)
    static func describe(_ code: Int32, handshake: Bool = false) -> String {
        let text = TLSCredentials.text(code)
        switch code {
        case GNUTLS_E_UNEXPECTED_PACKET_LENGTH, GNUTLS_E_UNSUPPORTED_VERSION_PACKET, GNUTLS_E_UNEXPECTED_PACKET,
             GNUTLS_E_RECORD_OVERFLOW:
            return text + " (does the peer speak TLS? a plain-text peer, or one started without --tls)"
        case GNUTLS_E_PREMATURE_TERMINATION, GNUTLS_E_PULL_ERROR, GNUTLS_E_PUSH_ERROR where handshake:
            return text + " (the peer hung up during the handshake: does the peer speak TLS? a plain-text peer, or one started without --tls)"
        default:
            return text
        }
    }
}
