import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// Issue 13's attacks on `lazy-pagesd serve` (a root service for many users), each tried as the attacker would —
/// real users made with useradd, in and out of the control socket's group — and each refused with a log line.
@Suite(.serialized) struct HostSafetyTests {
    /// A directory tree the test users can reach: `root` (0755) and, in it, a directory owned by `user`.
    final class Tree {
        let root: String
        init() throws {
            root = try makeTemporaryDirectory("lp-sec")
            chmod(root, 0o755)
        }
        deinit { try? FileManager.default.removeItem(atPath: root) }

        func directory(_ name: String, owner: TestUsers.User? = nil, mode: mode_t = 0o755) throws -> String {
            let path = root + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            if let owner { chown(path, owner.uid, owner.gid) }
            chmod(path, mode)
            return path
        }
    }

    /// A memory file every test user can read.
    static func readableMemory() throws -> MemoryFixture {
        let memory = try MemoryFixture(bytes: 1 << 20)
        chmod(memory.directory, 0o755)
        chmod(memory.memoryFile, 0o644)
        return memory
    }

    static func fileExists(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0
    }

    // MARK: 1. Removing a job's socket never reaches another file

    /// A group member's Firecracker job has its socket in her directory; she swaps the directory for a symlink into
    /// a root-only one holding a file of the same name, and cancels. The daemon must not remove that file (it used to
    /// `unlink` the path as root). Then she replaces the socket itself with a file: not removed either, and logged.
    @Test(.timeLimit(.minutes(20))) func cancellingAJobNeverRemovesAFileThroughASwappedDirectory() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group])
        let memory = try Self.readableMemory()
        let tree = try Tree()
        _ = try tree.directory("home", owner: users.memberA)
        let secret = try tree.directory("secret", mode: 0o700)
        let victim = secret + "/vm.sock"
        try "root's file\n".write(toFile: victim, atomically: false, encoding: .utf8)
        let dir = try tree.directory("home/dir", owner: users.memberA)

        let id = try daemon.add(["firecracker", "--socket", dir + "/vm.sock", "--mem-file", memory.memoryFile],
                                user: users.memberA)
        #expect(Self.fileExists(dir + "/vm.sock"))
        let swap = try Spawn.run(TestUsers.asUser(users.memberA, [
            "/bin/sh", "-c", "mv \(dir) \(dir).old && ln -s \(secret) \(dir)",
        ]))
        #expect(swap.exitCode == 0, "\(swap.stderr)")
        #expect(try daemon.cli(["cancel", id], user: users.memberA).exitCode == 0)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "root's file\n", "the root-only file survives")
        // The socket went from where it really was (the directory the job opened), by its inode.
        #expect(!Self.fileExists(dir + ".old/vm.sock"))

        // A file put in the socket's place is not the socket the job bound: it stays, and that is logged.
        let dir2 = try tree.directory("home/dir2", owner: users.memberA)
        let id2 = try daemon.add(["firecracker", "--socket", dir2 + "/vm.sock", "--mem-file", memory.memoryFile],
                                 user: users.memberA)
        let replace = try Spawn.run(TestUsers.asUser(users.memberA, [
            "/bin/sh", "-c", "rm \(dir2)/vm.sock && echo mine > \(dir2)/vm.sock",
        ]))
        #expect(replace.exitCode == 0, "\(replace.stderr)")
        #expect(try daemon.cli(["cancel", id2], user: users.memberA).exitCode == 0)
        #expect(try String(contentsOfFile: dir2 + "/vm.sock", encoding: .utf8) == "mine\n")
        #expect(daemon.waitForLog("not removing the socket path: it is no longer the socket this restore bound"),
                "\(daemon.process.stderr)")
    }}

    // MARK: 2. A live socket is never replaced

    /// In a shared sticky directory, one member's job listens on `vm1.sock`; another member's job at the same path is
    /// refused (it used to take the socket over, and the VM got the wrong user's memory), and the first job goes on to
    /// serve its VM. A stale socket of one user is not replaced for another, only for its owner.
    @Test(.timeLimit(.minutes(20))) func aLiveJobSocketIsNeverReplaced() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group])
        let memory = try Self.readableMemory()
        let tree = try Tree()
        let shared = try tree.directory("shared", mode: 0o1777)
        let socket = shared + "/vm1.sock"

        let first = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile],
                                   user: users.memberA)
        let second = try daemon.cli(["add", "firecracker", "--socket", socket, "--mem-file", memory.memoryFile],
                                    user: users.memberB)
        #expect(second.exitCode == 1)
        #expect(second.stderr.contains("is a live socket") && second.stderr.contains("refusing to replace it"),
                "\(second.stderr)")
        #expect(daemon.waitForLog("request refused"), "\(daemon.process.stderr)")
        // The first job still owns the path: its VM (root may connect) is served every byte.
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"])
        #expect(vm.finish() == .exited(0), "\(vm.lines)")
        #expect(try daemon.cli(["wait", first], user: users.memberA).exitCode == 0)

        // A stale socket (nothing listens) of member A: member B may not remove it in the sticky directory...
        let stale = shared + "/stale.sock"
        try Self.makeStaleSocket(stale, owner: users.memberA)
        let byB = try daemon.cli(["add", "firecracker", "--socket", stale, "--mem-file", memory.memoryFile],
                                 user: users.memberB)
        #expect(byB.exitCode == 1)
        #expect(byB.stderr.contains("is a stale socket of uid \(users.memberA.uid)") && byB.stderr.contains("may not remove"),
                "\(byB.stderr)")
        // ... its owner may.
        let byA = try daemon.add(["firecracker", "--socket", stale, "--mem-file", memory.memoryFile], user: users.memberA)
        #expect(try daemon.cli(["cancel", byA], user: users.memberA).exitCode == 0)
        #expect(daemon.waitForLog("replaced a stale socket"), "\(daemon.process.stderr)")
    }}

    /// A socket file at `path` that nothing listens on, owned by `owner`.
    static func makeStaleSocket(_ path: String, owner: TestUsers.User) throws {
        try makeStaleUnixSocket(at: path)
        guard chown(path, owner.uid, owner.gid) == 0 else {
            throw Emulator.Failure(description: "cannot give the stale socket at \(path) to \(owner.uid): errno \(errno)")
        }
    }

    // MARK: 3. Job sockets are the owner's, and only the owner (or root) is served

    /// Under umask 000, root's CRIU job socket used to be 0777: any local user connected first and was served root's
    /// pages. Now it is 0600 whatever the umask, so the kernel refuses her; and made reachable by mistake (chmod
    /// 0666), the daemon itself refuses her (SO_PEERCRED), logs it, and goes on waiting for the real restorer.
    @Test(.timeLimit(.minutes(20))) func aJobSocketServesOnlyItsOwnerOrRoot() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group], umask: "000")
        let images = try ImageFixture()
        chmod(images.directory, 0o755)
        let work = try images.workDirectory("root")
        chmod(work, 0o755)
        let id = try daemon.add(["criu", "-D", images.images, "-W", work])
        let socket = work + "/lazy-pages.socket"
        var status = stat()
        #expect(lstat(socket, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o600, "mode \(String(status.st_mode & 0o777, radix: 8))")
        #expect(status.st_uid == 0)
        let denied = try HeldConnections(socket, count: 1, as: users.outsider)
        #expect(denied.connected == 0 && denied.failures.contains("failed \(EACCES)"), "\(denied.failures)")
        denied.release()

        chmod(socket, 0o666)
        let refused = try HeldConnections(socket, count: 1, as: users.memberA)
        #expect(refused.connected == 1)
        #expect(daemon.waitForLog("refused a connection on the job socket"), "\(daemon.process.stderr)")
        #expect(daemon.process.stderr.contains("peer uid \(users.memberA.uid)"), "\(daemon.process.stderr)")
        refused.release()
        #expect(try daemon.request(ControlRequest(op: .status, id: id)).job?.state == .listening)
        // The real restorer (root) is served as ever.
        let restore = try Spawn.run([try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", images.images,
                                     "-W", work, "--timeout", "60"], timeoutMilliseconds: 90_000)
        #expect(restore.exitCode == 0, "\(restore.stderr)")
        #expect(try daemon.cli(["wait", id]).exitCode == 0)
    }}

    /// A Firecracker job's socket: 0600 and the owner's; with --group-access 0660 and the owner's group, and a group
    /// member is then served while an outsider whom a chmod let in is refused. With --job-socket-peers owner, not
    /// even root is.
    @Test(.timeLimit(.minutes(20))) func firecrackerJobSocketsCheckTheirPeer() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group, "--job-socket-peers", "owner"], umask: "000")
        let memory = try Self.readableMemory()
        let tree = try Tree()
        let home = try tree.directory("home", owner: users.memberA)
        let socket = home + "/vm.sock"
        let id = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile], user: users.memberA)
        var status = stat()
        #expect(lstat(socket, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o600 && status.st_uid == users.memberA.uid)
        chmod(socket, 0o666)  // as the owner might, by mistake
        for intruder in [users.outsider, users.memberB] {
            let held = try HeldConnections(socket, count: 1, as: intruder)
            #expect(held.connected == 1)
            #expect(daemon.waitForLog("peer uid \(intruder.uid) (pid"), "\(daemon.process.stderr)")
            held.release()
        }
        // Root is refused too under --job-socket-peers owner; the owner herself is served.
        let vmAsRoot = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"], wait: true)
        #expect(daemon.waitForLog("peer uid 0 (pid"), "\(daemon.process.stderr)")
        _ = vmAsRoot
        #expect(try daemon.request(ControlRequest(op: .status, id: id)).job?.state == .listening)
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"],
                              user: (users.memberA.uid, users.memberA.gid))
        #expect(vm.finish() == .exited(0), "\(vm.lines)")
        #expect(try daemon.cli(["wait", id], user: users.memberA).exitCode == 0)

        // Group access: 0660 with the owner's primary group.
        let grouped = home + "/grouped.sock"
        let id2 = try daemon.add(["firecracker", "--socket", grouped, "--mem-file", memory.memoryFile, "--group-access"],
                                 user: users.memberA)
        #expect(lstat(grouped, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o660 && status.st_gid == users.memberA.gid)
        #expect(try daemon.cli(["cancel", id2], user: users.memberA).exitCode == 0)
    }}

    // MARK: 6. The control socket cannot be held by one user

    /// One member opens 256 idle connections: only 16 are kept (the rest refused, logged), another member is still
    /// served, and idle connections are closed after --idle-timeout. `wait`s do not take connection slots but have a
    /// bound of their own.
    @Test(.timeLimit(.minutes(20))) func oneUserCannotLockOthersOutOfTheControlSocket() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group])
        let hog = try HeldConnections(daemon.controlSocket, count: 256, as: users.memberA)
        #expect(hog.connected == 256, "\(hog.failures)")
        #expect(daemon.waitForLog("control connection refused", count: 256 - 16), "\(daemon.process.stderr)")
        #expect(daemon.process.stderr.contains("already has 16 control connections open"))
        let other = try daemon.cli(["list"], user: users.memberB)
        #expect(other.exitCode == 0, "\(other.stderr)")
        let mine = try daemon.cli(["list"], user: users.memberA)
        #expect(mine.exitCode == 1 && mine.stderr.contains("too-many-connections"), "\(mine.stderr)")
        hog.release()
    }}

    @Test(.timeLimit(.minutes(20))) func idleControlConnectionsAreClosedAndWaitsAreBounded() async throws { try await oneHeavyTestAtATime {
        let users = try TestUsers()
        let daemon = try ServiceDaemon(["--socket-group", users.group, "--idle-timeout", "1", "--max-waits-per-uid", "4"])
        let idle = try HeldConnections(daemon.controlSocket, count: 16, as: users.memberA)
        #expect(idle.connected == 16)
        #expect(daemon.waitForLog("control connection idle; closing it", count: 16), "\(daemon.process.stderr)")
        #expect(try daemon.cli(["list"], user: users.memberA).exitCode == 0)
        idle.release()

        let memory = try Self.readableMemory()
        let tree = try Tree()
        let home = try tree.directory("home", owner: users.memberA)
        let id = try daemon.add(["firecracker", "--socket", home + "/vm.sock", "--mem-file", memory.memoryFile],
                                user: users.memberA)
        // Six waits: four wait (and no longer count as connections), two are refused.
        let waits = try HeldConnections(daemon.controlSocket, count: 6,
                                        line: "{\"version\":1,\"op\":\"wait\",\"id\":\"\(id)\"}", as: users.memberA)
        #expect(waits.connected == 6)
        #expect(daemon.waitForLog("too-many-waits", count: 2), "\(daemon.process.stderr)")
        // The two refused connections go idle and are closed; the four waiting ones are not idle.
        #expect(daemon.waitForLog("control connection idle; closing it", count: 18), "\(daemon.process.stderr)")
        // Waiting connections are not idle and take no connection slot: the owner still gets 16 more.
        let more = try HeldConnections(daemon.controlSocket, count: 16, line: "{\"version\":1,\"op\":\"list\"}",
                                       as: users.memberA)
        #expect(more.connected == 16)
        #expect(!daemon.process.stderr.contains("already has 16 control connections open"), "\(daemon.process.stderr)")
        more.release()
        #expect(try daemon.cli(["cancel", id], user: users.memberA).exitCode == 0)
        waits.release()
    }}

    // MARK: 8. Log and pid files never follow a symlink

    /// A user-writable work directory with `log` (and `pid`) planted as symlinks to a root-only file: the daemon,
    /// run as root, refuses them with a clear error instead of appending to (or replacing) the target. Both the
    /// standalone daemon and `serve`.
    @Test(.timeLimit(.minutes(20))) func logAndPidFilesAreNotFollowedThroughSymlinks() async throws { try await oneHeavyTestAtATime {
        let images = try ImageFixture()
        let work = try images.workDirectory("planted")
        chmod(work, 0o777)
        let secret = try makeTemporaryDirectory("lp-sec-secret")
        defer { try? FileManager.default.removeItem(atPath: secret) }
        let victim = secret + "/shadow"
        try "root only\n".write(toFile: victim, atomically: false, encoding: .utf8)
        chmod(victim, 0o600)
        symlink(victim, work + "/log")
        symlink(victim, work + "/pid")
        let daemon = try BuiltProducts.path(of: "lazy-pagesd")

        let logged = try Spawn.run([daemon, "-D", images.images, "-W", work, "-o", "log", "--no-guardian"])
        #expect(logged.exitCode != 0)
        #expect(logged.stderr.contains("\(work)/log is a symbolic link; refusing to follow it"), "\(logged.stderr)")
        let pid = try Spawn.run([daemon, "-D", images.images, "-W", work, "--pidfile", work + "/pid", "--no-guardian"])
        #expect(pid.exitCode != 0)
        #expect(pid.stderr.contains("\(work)/pid is a symbolic link; refusing to follow it"), "\(pid.stderr)")
        let serve = try Spawn.run([daemon, "serve", "--control-socket", work + "/control.sock", "-o", work + "/log"])
        #expect(serve.exitCode != 0)
        #expect(serve.stderr.contains("is a symbolic link; refusing to follow it"), "\(serve.stderr)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "root only\n")
        var status = stat()
        #expect(lstat(work + "/pid", &status) == 0 && status.st_mode & S_IFMT == S_IFLNK, "the planted link stays")
        // A hard link to someone else's file is refused as well.
        unlink(work + "/log")
        #expect(link(victim, work + "/log") == 0)
        let linked = try Spawn.run([daemon, "-D", images.images, "-W", work, "-o", "log", "--no-guardian"])
        #expect(linked.exitCode != 0)
        #expect(linked.stderr.contains("other hard links"), "\(linked.stderr)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "root only\n")
    }}

    // MARK: 9. A job's page server must be one the operator allows

    /// By default no page server is allowed: the job is refused before anything connects (so the reply says nothing
    /// about the host). An allowed one is connected to.
    @Test(.timeLimit(.minutes(20))) func aPageServerMustBeAllowedByTheOperator() async throws { try await oneHeavyTestAtATime {
        let listener = try TCPTestListener()
        let images = try ImageFixture()
        let work = try images.workDirectory("remote")
        let daemon = try ServiceDaemon()
        let refused = try daemon.cli(["add", "criu", "-D", images.images, "-W", work,
                                      "--page-server", "127.0.0.1:\(listener.port)"])
        #expect(refused.exitCode == 1)
        #expect(refused.stderr.contains("not-allowed") && refused.stderr.contains("nothing was connected"),
                "\(refused.stderr)")
        #expect(daemon.waitForLog("code=not-allowed"), "\(daemon.process.stderr)")
        #expect(!listener.hasConnection(waitingUpTo: 0), "the daemon connected to a page server nobody allowed")
        // A different port of an allowed host is not allowed either.
        let narrow = try ServiceDaemon(["--allow-page-server", "127.0.0.1:\(listener.port == 1 ? 2 : 1)"])
        let wrongPort = try narrow.cli(["add", "criu", "-D", images.images, "-W", work,
                                        "--page-server", "127.0.0.1:\(listener.port)"])
        #expect(wrongPort.stderr.contains("not-allowed"), "\(wrongPort.stderr)")
        #expect(!listener.hasConnection(waitingUpTo: 0))

        let allowing = try ServiceDaemon(["--allow-page-server", "127.0.0.1"])
        let allowed = try allowing.cli(["add", "criu", "-D", images.images, "-W", work,
                                        "--page-server", "127.0.0.1:\(listener.port)"])
        #expect(!allowed.stderr.contains("not-allowed"), "\(allowed.stderr)")
        #expect(listener.hasConnection(), "an allowed page server is connected to")
    }}
}

/// A TCP listener on 127.0.0.1 (kernel-chosen port) that only counts whether anyone connected.
final class TCPTestListener {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        self.fd = fd
        guard let port = bindLoopback(fd, listenBacklog: 16) else {
            throw Emulator.Failure(description: "cannot listen: errno \(errno)")
        }
        self.port = port
    }

    deinit { close(fd) }

    /// Whether a connection is waiting (takes it), polling up to `seconds` (a safety net: a daemon that connects does
    /// so before `add` replies, so 0 is right for "it did not").
    func hasConnection(waitingUpTo seconds: Int32 = 30) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, seconds * 1000) > 0 else { return false }
        let accepted = accept(fd, nil, nil)
        if accepted >= 0 { close(accepted) }
        return accepted >= 0
    }
}
