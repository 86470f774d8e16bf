import LinuxSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The service side of systemd's file-descriptor store (`sd_pid_notify_with_fds(3)`, `FileDescriptorStoreMax=`):
/// descriptors sent with `FDSTORE=1` and a name (`FDNAME=`) are kept open by systemd while the service restarts
/// (`Restart=on-failure`: crash, SIGKILL, OOM killer) and handed to the next process in `LISTEN_FDS`, after the
/// socket-activation ones, with their names in `LISTEN_FDNAMES`. `systemctl stop` empties the store.
///
/// systemd acknowledges nothing: a message beyond `FileDescriptorStoreMax=` is dropped with a line in systemd's own
/// log. So the store counts what it holds itself and refuses (throws) past `capacity`, which must be at most the
/// unit's `FileDescriptorStoreMax=` (the service passes the same number, see `lazy-pagesd serve --fd-store-max`).
public final class FileDescriptorStore: @unchecked Sendable {
    /// Why a descriptor was not stored.
    public struct Error: Swift.Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Where the messages go (`NOTIFY_SOCKET`).
    public let socketPath: String
    /// Descriptors this store may hold at once.
    public let capacity: Int
    /// Descriptors stored, by name (a name may carry several: systemd keeps each, and removes them together).
    private struct Held {
        var counts: [String: Int] = [:]
        var total = 0
    }
    private let held = Mutex(Held())

    /// A store reached through `NOTIFY_SOCKET` of `environment`; nil when there is none (not started by systemd as
    /// `Type=notify`) or `capacity` is 0 (the store is off).
    public init?(capacity: Int, environment: [String: String] = currentEnvironment()) {
        guard capacity > 0, let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        socketPath = path
        self.capacity = capacity
    }

    /// Descriptors stored now.
    public var count: Int {
        held.withLock { $0.total }
    }

    /// Registers descriptors that came back from the store at start-up (`LISTEN_FDS`), so that they are counted
    /// against `capacity` (systemd still holds them) and can be removed by name.
    public func adopt(name: String, count: Int = 1) {
        held.withLock {
            $0.counts[name, default: 0] += count
            $0.total += count
        }
    }

    /// `FDSTORE=1` with `FDNAME=name` and `descriptors` (`SCM_RIGHTS`). `poll: false` adds `FDPOLL=0`: systemd then
    /// never drops the descriptor for polling as an error or hang-up — required for a userfaultfd (it polls as an
    /// error until its API handshake) and for anything whose peer may hang up while it must be kept.
    public func store(_ descriptors: [Int32], name: String, poll: Bool = true) throws(Error) {
        guard !descriptors.isEmpty else { return }
        guard Self.isValidName(name) else { throw Error(description: "\"\(name)\" is not a valid FDNAME") }
        try held.withLock { (held) throws(Error) in
            guard held.total + descriptors.count <= capacity else {
                throw Error(description: "the descriptor store is full (\(held.total) of \(capacity) held; raise "
                    + "FileDescriptorStoreMax= and --fd-store-max together)")
            }
            var message = ["FDSTORE=1", "FDNAME=\(name)"]
            if !poll { message.append("FDPOLL=0") }
            try send(message, descriptors: descriptors)
            held.counts[name, default: 0] += descriptors.count
            held.total += descriptors.count
        }
    }

    /// `FDSTOREREMOVE=1` with `FDNAME=name`: systemd closes every descriptor stored under that name.
    public func remove(name: String) throws(Error) {
        guard Self.isValidName(name) else { throw Error(description: "\"\(name)\" is not a valid FDNAME") }
        try held.withLock { (held) throws(Error) in
            try send(["FDSTOREREMOVE=1", "FDNAME=\(name)"], descriptors: [])
            held.total -= held.counts.removeValue(forKey: name) ?? 0
        }
    }

    /// `BARRIER=1` (`sd_notify_barrier(3)`): returns once systemd has handled every message sent before it, which
    /// it shows by closing the pipe end sent along. A process about to exit calls it: systemd finds the unit of a
    /// message by its sender, and a sender already gone may have its descriptors dropped.
    public func barrier(timeout milliseconds: Int32 = 5_000) throws(Error) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw Error(description: "pipe: \(SystemCallError.reason())") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        do {
            try send(["BARRIER=1"], descriptors: [ends[1]])
        } catch {
            close(ends[1])
            throw error
        }
        close(ends[1])
        var entry = pollfd(fd: ends[0], events: 0, revents: 0)
        while true {
            let ready = poll(&entry, 1, milliseconds)
            if ready > 0 { return }
            if ready == 0 { throw Error(description: "systemd did not answer BARRIER=1 within \(milliseconds) ms") }
            guard errno == EINTR else { throw Error(description: "poll: \(SystemCallError.reason())") }
        }
    }

    /// Whether systemd takes `name` as an `FDNAME=`: 1–255 printable ASCII characters, no `:` (it separates
    /// `LISTEN_FDNAMES`).
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return (1...255).contains(bytes.count) && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
    }

    /// One datagram to the notify socket, with `descriptors` attached. Blocking (unlike `SystemdNotifier`'s status
    /// lines): a stored descriptor must not be dropped because systemd's queue was momentarily full.
    private func send(_ assignments: [String], descriptors: [Int32]) throws(Error) {
        guard var address = SystemdNotifier.address(socketPath) else {
            throw Error(description: "NOTIFY_SOCKET is not a usable address: \(socketPath)")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Error(description: "socket(AF_UNIX, SOCK_DGRAM): \(SystemCallError.reason())") }
        defer { close(fd) }
        let connected = withUnsafePointer(to: &address.storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, address.length) }
        }
        guard connected == 0 else {
            throw Error(description: "cannot reach systemd's notify socket \(socketPath): \(SystemCallError.reason())")
        }
        do {
            try DescriptorPassing.send(socket: fd, bytes: Array((assignments.joined(separator: "\n") + "\n").utf8),
                                       descriptors: descriptors)
        } catch {
            throw Error(description: "sending \(assignments.first ?? "") to systemd: \(error)")
        }
    }
}
