import LazyPagesControl

/// What the operator allows jobs to do beyond their owner's own files: which page servers a job may make the daemon
/// connect to, and whether root may be the peer of a job socket.
public struct JobPolicy: Sendable {
    /// `pageServer` addresses a job may name (`--allow-page-server`); none by default, so that no user can make the
    /// daemon open connections to hosts of its choosing.
    public var allowedPageServers: [PageServerAllowance] = []
    /// Root may connect to a job's socket besides its owner (`--job-socket-peers owner-or-root`, the default:
    /// `criu restore` usually runs as root).
    public var allowRootPeers = true

    public init() {}

    public func allows(_ server: JobSpec.PageServerAddress) -> Bool {
        allowedPageServers.contains { $0.allows(server) }
    }
}

/// One `--allow-page-server HOST[:PORT]` entry: a host exactly as jobs spell it (no name resolution), any port
/// unless one is given. IPv6 addresses with a port go in brackets (`[fd00::2]:27000`).
public struct PageServerAllowance: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16?

    public init(host: String, port: UInt16? = nil) {
        self.host = host
        self.port = port
    }

    /// nil when `text` is not `HOST`, `HOST:PORT` or `[V6]:PORT`.
    public init?(parsing text: String) {
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard !host.isEmpty else { return nil }
            if rest.isEmpty { self.init(host: host); return }
            guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()), port != 0 else { return nil }
            self.init(host: host, port: port)
            return
        }
        let colons = text.filter { $0 == ":" }.count
        if colons == 1, let colon = text.firstIndex(of: ":") {
            guard let port = UInt16(text[text.index(after: colon)...]), port != 0, colon != text.startIndex else {
                return nil
            }
            self.init(host: String(text[..<colon]), port: port)
            return
        }
        guard !text.isEmpty, !text.contains(where: { $0 == " " || $0 == "/" }) else { return nil }
        self.init(host: text)
    }

    public func allows(_ server: JobSpec.PageServerAddress) -> Bool {
        server.address == host && (port == nil || port == server.port)
    }

    public var description: String {
        let shown = host.contains(":") ? "[\(host)]" : host
        return port.map { "\(shown):\($0)" } ?? shown
    }
}
