#if canImport(Glibc)
import Glibc
#endif

/// The service side of `sd_notify(3)`: state changes sent as datagrams to the socket systemd names in
/// `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Without `NOTIFY_SOCKET` (not started
/// by systemd, or not `Type=notify`) every call does nothing and reports false.
public struct SystemdNotifier: Sendable {
    /// The socket address as systemd gave it, or nil.
    public let socketPath: String?

    /// Reads `NOTIFY_SOCKET` from `environment` (the process's own by default).
    public init(environment: [String: String] = currentEnvironment()) {
        let value = environment["NOTIFY_SOCKET"]
        socketPath = (value?.isEmpty ?? true) ? nil : value
    }

    public var isEnabled: Bool { socketPath != nil }

    /// `READY=1`: start-up is finished (systemd now considers the unit started), with an optional status line.
    @discardableResult
    public func ready(status: String? = nil) -> Bool {
        notify(["READY=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// `STATUS=...`: a one-line, human-readable state shown by `systemctl status`.
    @discardableResult
    public func status(_ text: String) -> Bool { notify(["STATUS=\(text)"]) }

    /// `STOPPING=1`: shutdown has begun.
    @discardableResult
    public func stopping(status: String? = nil) -> Bool {
        notify(["STOPPING=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// Sends `assignments` (`KEY=value`, no newlines inside) as one datagram. Returns false when notification is
    /// off, the address is unusable, or the send failed.
    @discardableResult
    public func notify(_ assignments: [String]) -> Bool {
        guard let socketPath, !assignments.isEmpty,
              assignments.allSatisfy({ $0.contains("=") && !$0.contains("\n") })
        else { return false }
        guard var address = Self.address(socketPath) else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let message = Array((assignments.joined(separator: "\n") + "\n").utf8)
        let sent = withUnsafePointer(to: &address.storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                message.withUnsafeBytes { bytes in
                    // Never block the service on a supervisor that does not read (a full queue drops the update).
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT), sockaddrPointer,
                           address.length)
                }
            }
        }
        return sent == message.count
    }

    /// A `sockaddr_un` for a path, or for an abstract name (`@name` → a leading NUL byte, length not padded).
    static func address(_ path: String) -> (storage: sockaddr_un, length: socklen_t)? {
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard bytes.first == UInt8(ascii: "/") || abstract else { return nil }
        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let header = MemoryLayout<sa_family_t>.size
        // An abstract name is exactly its bytes; a path is NUL-terminated.
        let length = header + bytes.count + (abstract ? 0 : 1)
        return (storage, socklen_t(length))
    }
}

/// The process environment as a dictionary.
public func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var pointer = environ
    while let entry = pointer.pointee {
        let text = String(cString: entry)
        if let equals = text.firstIndex(of: "=") {
            result[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        pointer += 1
    }
    return result
}
