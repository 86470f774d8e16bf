#if canImport(Glibc)
import Glibc
import LinuxSupport
#endif

/// One connected TCP socket of the page-server protocol, plain or TLS: the one transport both the page server and
/// its client read and write through. Non-blocking: every call returns at once, `.wouldBlock` when the socket (or
/// the TLS session) needs to wait. Owns the descriptor.
///
/// With TLS, each `send` is one TLS record of at most 16 KiB. CRIU's client reads a reply's header and its pages
/// with separate `gnutls_record_recv` calls woken by epoll, so a record must never hold bytes of two parts: the
/// page server sends a header in a record of its own, and the pages in records of their own.
public final class TCPConnection {
    public enum IO: Equatable {
        case done(Int)
        case wouldBlock
        case closed
        /// A failure a reconnect cannot cure (the peer refused our TLS certificate).
        case refused(String)
        case failed(String)
    }

    public let descriptor: Int32
    /// "address:port" of the peer, for log lines and errors.
    public let peer: String
    private var tls: TLSSession?
    private var closed = false

    public init(descriptor: Int32, peer: String? = nil) {
        self.descriptor = descriptor
        self.peer = peer ?? TCPSocket.peerName(descriptor)
    }

    deinit { close() }

    public var isTLS: Bool { tls != nil }

    /// Sends our TLS close_notify (if any) and closes the socket.
    public func close() {
        guard !closed else { return }
        closed = true
        if handshakeDone { tls?.bye() }
        tls = nil
        Glibc.close(descriptor)
    }

    /// Ends our direction (TLS close_notify, then FIN); reading stays possible.
    public func finishSending() {
        if handshakeDone { tls?.bye() }
        shutdown(descriptor, Int32(SHUT_WR))
    }

    // MARK: TLS

    /// Puts a TLS session on the socket; the handshake follows (`handshakeStep` or `handshake(timeout:)`).
    public func startTLS(server: Bool, credentials: TLSCredentials) throws(PageServerError) {
        tls = try TLSSession(descriptor: descriptor, role: server ? .server : .client, credentials: credentials)
    }

    public enum HandshakeStep: Equatable {
        case done
        case wantRead
        case wantWrite
        case failed(String)
    }

    /// One non-blocking step of the handshake. On the server, a first byte that cannot start a TLS record (a
    /// plain-text client) fails at once with that reason.
    public func handshakeStep() -> HandshakeStep {
        guard let tls else { return .done }
        if tls.role == .server && !sawFirstByte {
            var first: UInt8 = 0
            let n = recv(descriptor, &first, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return .wantRead }
            if n == 0 { return .failed("the client closed the connection before the TLS handshake") }
            if n < 0 { return .failed("receiving failed: \(SystemCallError.reason())") }
            guard first == 0x16 else {
                return .failed("a plain-text peer: its first byte 0x\(String(first, radix: 16)) cannot start a TLS handshake (a client without --tls?)")
            }
            sawFirstByte = true
        }
        switch tls.handshake() {
        case .done:
            handshakeDone = true
            return .done
        case .again: return tls.wantsWrite ? .wantWrite : .wantRead
        case .failed(let reason): return .failed("TLS handshake failed: \(reason)")
        }
    }

    private var sawFirstByte = false
    /// Only a finished handshake ends with a close_notify (a plain-text peer gets no TLS bytes at all).
    private var handshakeDone = false

    /// The whole handshake, waiting at most `timeout` seconds, then the peer's certificate check (`hostname`: the
    /// name its certificate must carry; nil: only the chain is checked).
    public func handshake(timeout: Double, hostname: String?) throws(PageServerError) {
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        while true {
            let events: Int16
            switch handshakeStep() {
            case .done:
                if let reason = verifyPeer(hostname: hostname) {
                    throw PageServerError(.configuration, "TLS with \(peer): the peer's certificate is refused: \(reason)")
                }
                return
            case .failed(let reason):
                throw PageServerError(.configuration, "TLS with \(peer): \(reason)")
            case .wantRead: events = Int16(POLLIN)
            case .wantWrite: events = Int16(POLLOUT)
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else {
                throw PageServerError(.connection, "TLS with \(peer): no handshake within \(timeout) s")
            }
            var entry = pollfd(fd: descriptor, events: events, revents: 0)
            let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            if poll(&entry, 1, ms) < 0 && errno != EINTR {
                throw PageServerError(.connection, "TLS with \(peer): poll: \(SystemCallError.reason())")
            }
        }
    }

    /// Nil when the peer's certificate chains to a trusted CA, is valid now, not revoked, and (with `hostname`)
    /// names `hostname`; else the reason, in GnuTLS's words.
    public func verifyPeer(hostname: String?) -> String? {
        guard let reason = tls?.verifyPeer(hostname: hostname) else { return nil }
        tls?.refuseCertificate()
        return reason
    }

    // MARK: Data

    /// Sends up to `count` bytes (one TLS record with TLS). `more`: more follows at once (plain: `MSG_MORE`).
    public func send(_ bytes: UnsafeRawPointer, _ count: Int, more: Bool = false) -> IO {
        if let tls { return tls.send(bytes, count) }
        let flags = Int32(MSG_NOSIGNAL | MSG_DONTWAIT) | (more ? Int32(MSG_MORE) : 0)
        let n = retryingOnInterrupt { Glibc.send(descriptor, bytes, count, flags) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN { return .wouldBlock }
        return .failed("sending failed: \(SystemCallError.reason())")
    }

    /// Bytes a TLS session holds that the socket has not taken yet (they must be flushed before the reply is done).
    public var hasPendingOutput: Bool { tls?.pendingFlush ?? false }

    /// Pushes out what `hasPendingOutput` reports; `.done(0)` when nothing is left.
    public func flush() -> IO { tls?.flush() ?? .done(0) }

    /// Sends up to `count` bytes of `file` from `offset` (advanced by what was sent): `sendfile` on a plain socket;
    /// with TLS, one record read into `scratch` (at least 16 KiB).
    public func sendFile(_ file: Int32, offset: inout off_t, count: Int, scratch: UnsafeMutableRawPointer) -> IO {
        guard let tls else {
            let n = retryingOnInterrupt { sendfile(descriptor, file, &offset, count) }
            if n > 0 { return .done(n) }
            if n == 0 { return .failed("the pages file ended early") }
            if errno == EAGAIN { return .wouldBlock }
            return .failed("sending page data failed: \(SystemCallError.reason())")
        }
        if tls.pendingFlush {
            switch tls.flush() {
            case .done: break
            case let other: return other
            }
        }
        let want = min(count, TLSSession.maxRecord)
        var have = 0
        while have < want {
            let n = retryingOnInterrupt { pread(file, scratch + have, want - have, offset + off_t(have)) }
            guard n > 0 else { return .failed("reading the pages file failed: \(n == 0 ? "it ended early" : SystemCallError.reason())") }
            have += n
        }
        let result = tls.send(scratch, have)
        if case .done(let n) = result { offset += off_t(n) }
        return result
    }

    /// Receives up to `count` bytes.
    public func receive(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> IO {
        if let tls { return tls.receive(buffer, count) }
        let n = retryingOnInterrupt { recv(descriptor, buffer, count, Int32(MSG_DONTWAIT)) }
        if n > 0 { return .done(n) }
        if n == 0 { return .closed }
        if errno == EAGAIN { return .wouldBlock }
        return .failed("receiving failed: \(SystemCallError.reason())")
    }
}
