import LazyPagesEngine
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of `lp-guardian` (see Sources/lp-guardian/main.c): a process that holds a duplicate of every
/// uffd of the restore and, if the daemon goes away without saying "done", kills the restore's processes before
/// their uffds are released — so no restored process ever runs on with kernel zero pages in place of its memory.
///
/// One link per restore. Install it as the engine's `observer`, report the restorer's pid with `restorer(pid:)`,
/// and call `finish(clean:)` when the restore ends.
public final class GuardianLink: RestoreObserver, @unchecked Sendable {
    /// Message kinds of the guardian protocol (16-byte packets: kind, id, a, b).
    enum Kind: UInt32 { case restorer = 1, add = 2, fork = 3, retire = 4, done = 5 }

    public let pid: pid_t
    private var socket: Int32
    private let logger: Logger
    private var broken = false

    /// Starts `lp-guardian` (`$LP_GUARDIAN`, else next to the running executable, unless `path` is given) with one
    /// end of a `SOCK_SEQPACKET` socketpair as its fd 3, in its own process group.
    public init(path: String? = nil, logger: Logger) throws {
        self.logger = logger
        guard let executable = path ?? Self.defaultPath() else {
            throw LazyPagesError("cannot find lp-guardian next to this executable (set LP_GUARDIAN)")
        }
        guard access(executable, X_OK) == 0 else {
            throw LazyPagesError("lp-guardian is not executable: \(executable): \(String(cString: strerror(errno)))")
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw LazyPagesError("socketpair for lp-guardian: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], 3)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK))
        let argv = [strdup(executable), nil]
        defer { free(argv[0]) }
        var child: pid_t = 0
        let rc = argv.withUnsafeBufferPointer { posix_spawn(&child, executable, &actions, &attributes, $0.baseAddress!, environ) }
        close(pair[1])
        guard rc == 0 else {
            close(pair[0])
            throw LazyPagesError("cannot start lp-guardian \(executable): \(String(cString: strerror(rc)))")
        }
        pid = child
        socket = pair[0]
        logger.info("guardian started", metadata: ["pid": "\(child)", "path": "\(executable)"])
    }

    deinit { if socket >= 0 { close(socket) } }

    /// The process on the other end of the lazy-pages socket: the restored tasks are its descendants.
    public func restorer(pid: pid_t) {
        send(.restorer, id: 0, a: pid)
    }

    public func taskAdded(id: Int, imagePid: Int32, uffd: Int32) {
        send(.add, id: id, a: imagePid, descriptor: uffd)
    }

    public func processForked(parent: Int, child: Int, uffd: Int32) {
        send(.fork, id: child, a: Int32(truncatingIfNeeded: parent), descriptor: uffd)
    }

    public func processRetired(id: Int) {
        send(.retire, id: id, a: 0)
    }

    /// Ends the link. `clean`: the restore completed, the guardian lets go of everything and exits 0. Otherwise the
    /// link is just closed: the guardian kills every process of the restore still depending on a uffd (a failed
    /// restore must not leave processes running on zero pages). Waits for the guardian and returns its exit status
    /// (0 clean or nothing in flight, 3 after killing, other values on errors).
    @discardableResult
    public func finish(clean: Bool) -> Int32 {
        if clean { send(.done, id: 0, a: 0) }
        if socket >= 0 {
            close(socket)
            socket = -1
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : -signal
    }

    private func send(_ kind: Kind, id: Int, a: Int32, descriptor: Int32? = nil) {
        guard socket >= 0, !broken else { return }
        let words: [UInt32] = [kind.rawValue, UInt32(truncatingIfNeeded: id), UInt32(bitPattern: a), 0]
        let bytes = words.withUnsafeBytes { Array($0) }
        do {
            try DescriptorPassing.send(socket: socket, bytes: bytes, descriptors: descriptor.map { [$0] } ?? [])
        } catch {
            // Protection is lost but the restore itself is fine: say so loudly, once.
            broken = true
            logger.error("the guardian is gone: a daemon crash from now on would leave processes on zero pages",
                         metadata: ["guardian": "\(pid)", "error": "\(error)"])
        }
    }

    /// `$LP_GUARDIAN`, else `lp-guardian` in the directory of the running executable.
    static func defaultPath() -> String? {
        if let env = getenv("LP_GUARDIAN") { return String(cString: env) }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = exe.lastIndex(of: "/") else { return nil }
        return String(exe[..<slash]) + "/lp-guardian"
    }
}

/// The pid of the process on the other end of a unix socket (`SO_PEERCRED`), or nil.
public func peerProcess(of socket: Int32) -> pid_t? {
    // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (not exported by Glibc's module without _GNU_SOURCE)
    var credentials: (Int32, UInt32, UInt32) = (0, 0, 0)
    var length = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
    guard getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0, credentials.0 > 0 else {
        return nil
    }
    return credentials.0
}
