import LinuxSupport
import Foundation

/// The reference CRIU 4.2 (`../shared/criu/build-criu`; CI builds it): `$LP_CRIU`, or where build-criu puts it.
public enum RealCRIU {
    public static let defaultPath = "/var/tmp/lazy-pages-criu-4.2/criu-4.2/criu/criu"

    /// The criu binary, if there is one.
    public static let path: String? = {
        let candidate = ProcessInfo.processInfo.environment["LP_CRIU"] ?? defaultPath
        return access(candidate, X_OK) == 0 ? candidate : nil
    }()

    /// Whether real CRIU runs can be made here: the binary exists and we are root (criu dump and restore need it).
    public static var isAvailable: Bool { path != nil && geteuid() == 0 }

    /// Why not, for a skip message.
    public static var unavailableReason: String {
        if path == nil { return "no criu binary at $LP_CRIU or \(defaultPath) (build it: ../shared/criu/build-criu)" }
        if geteuid() != 0 { return "criu dump and criu restore need root" }
        return "available"
    }
}

/// One real `criu dump` / `criu restore --lazy-pages` cycle of `lp-criu-workload`, in a temporary directory of its
/// own (removed, with every process of the run killed, when the run is released — pass or fail).
///
///     let run = try CRIURun(mode: "fork", mib: 16)
///     try run.dump()
///     let daemon = try run.startLazyPagesd()
///     try run.restore()
///     run.wake()
///     #expect(try run.result().hasPrefix("OK "))
///     #expect(try daemon.wait() == 0)
///
/// The workload starts in a session of its own with stdio on files (so `criu dump` takes it), reports readiness on
/// a fifo, and after the restore (detached: it is no longer our child) reports its verdict on another fifo. CRIU's
/// logs (`dump.log`, `restore.log`, `lazy-pages.log`, `page-server.log`) are in `directory`; `logs()` gathers them
/// for a failure message.
public final class CRIURun {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public let directory: String
    public let criu: String
    /// `criu dump -D` / `restore -D` / every daemon's `-D`.
    public let images: String
    /// `-W` of the restore and the lazy-pages daemon (where `lazy-pages.socket` is).
    public let work: String
    /// The workload's pid (the same after the restore: CRIU restores pids) and process group.
    public private(set) var pid: pid_t
    /// The workload's page count and the address of its patterned mapping, from its READY line.
    public private(set) var pages: Int
    public private(set) var base: UInt64
    private var resultFD: Int32
    private var peers: [PeerProcess] = []
    private var workloadReaped = false

    /// Starts `lp-criu-workload --mode MODE --mib MIB` and waits until it is ready to be dumped.
    public init(mode: String, mib: Int, seed: UInt64 = 7, children: Int = 2, threads: Int = 4) throws {
        guard let criu = RealCRIU.path else { throw Failure(description: RealCRIU.unavailableReason) }
        self.criu = criu
        var template = Array("/tmp/lp-criu-e2e.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw Failure(description: "mkdtemp: errno \(errno)")
        }
        directory = String(cString: made)
        images = directory + "/images"
        work = directory + "/work"
        resultFD = -1
        pid = -1
        pages = 0
        base = 0
        var readyFD: Int32 = -1
        do {
            for sub in [images, work] { try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: false) }
            for fifo in ["ready", "result"] where mkfifo(directory + "/" + fifo, 0o600) != 0 {
                throw Failure(description: "mkfifo \(fifo): errno \(errno)")
            }
            // Both fifos are opened for reading before the workload starts, so its blocking opens for writing
            // always find a reader; a fifo that never had a writer does not report a hang-up.
            readyFD = open(directory + "/ready", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            resultFD = open(directory + "/result", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            guard readyFD >= 0, resultFD >= 0 else { throw Failure(description: "open fifo: errno \(errno)") }
            let workload = try BuiltProducts.path(of: "lp-criu-workload")
            let arguments = [
                "--mode", mode, "--mib", "\(mib)", "--seed", "\(seed)", "--children", "\(children)",
                "--threads", "\(threads)", "--ready", directory + "/ready", "--result", directory + "/result",
            ]
            pid = try spawnChild(
                workload, arguments,
                descriptors: [(0, .null), (1, .file(directory + "/workload.out")), (2, .file(directory + "/workload.err"))],
                newSession: true)
            let line = try Self.readLine(readyFD, watching: nil, timeout: 60, what: "the workload's READY line")
            close(readyFD)
            readyFD = -1
            let fields = Self.fields(line)
            guard line.hasPrefix("READY "), let pages = fields["pages"].flatMap({ Int($0) }),
                let base = fields["base"].flatMap({ UInt64($0.dropFirst(2), radix: 16) })
            else { throw Failure(description: "unexpected READY line: \(line)") }
            self.pages = pages
            self.base = base
        } catch {
            if readyFD >= 0 { close(readyFD) }
            cleanUp()
            throw Failure(description: "\(error)\n\(logs())")
        }
    }

    deinit { cleanUp() }

    /// Kills every process of the run (the workload's process group, the peers), closes the fifos, removes the
    /// directory.
    private func cleanUp() {
        if pid > 0 {
            kill(-pid, SIGKILL)
            if !workloadReaped { _ = waitpidRetrying(pid) }
            workloadReaped = true
        }
        for peer in peers { _ = try? peer.terminate(timeout: 10) }
        peers = []
        if resultFD >= 0 { close(resultFD) }
        resultFD = -1
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: criu

    /// Runs `criu ARGUMENTS`; throws with the log `logName` if it does not exit 0.
    @discardableResult
    public func criu(_ arguments: [String], log logName: String, timeout: Int32 = 120) throws -> Spawn.Output {
        let output = try Spawn.run([criu] + arguments, timeoutMilliseconds: timeout * 1000)
        guard output.exitCode == 0 else {
            throw Failure(
                description: "criu \(arguments.first ?? "") exited \(output.status): \(output.stderr)\n"
                    + tail(logName))
        }
        return output
    }

    /// `criu dump` of the workload's tree into `images` (which kills it; the original is reaped here so that its
    /// pid is free for the restore).
    public func dump(_ extra: [String] = []) throws {
        let members = Self.processGroup(pid)
        try criu(["dump", "-t", "\(pid)", "-D", images, "-o", "dump.log", "-v4"] + extra, log: "images/dump.log")
        if !workloadReaped {
            _ = waitpidRetrying(pid)
            workloadReaped = true
        }
        // The rest of the tree (children, zombies) went to init when the root died; the restore needs their pids
        // free, so wait until init has reaped them (there is no event for another parent's reaping: look at /proc).
        let deadline = ContinuousClock.now + .seconds(30)
        while let left = members.first(where: { access("/proc/\($0)", F_OK) == 0 }) {
            guard ContinuousClock.now < deadline else {
                throw Failure(description: "pid \(left) of the dumped tree was not reaped within 30 s")
            }
            usleep(5_000)
        }
    }

    /// Every process whose process group is `group` (from /proc/PID/stat), zombies included.
    public static func processGroup(_ group: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let candidate = pid_t(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            // After "(comm)": state, ppid, pgrp.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && pid_t(fields[2]) == group ? candidate : nil
        }
    }

    /// `criu restore --lazy-pages --restore-detached` from `images`, against the lazy-pages daemon in `work`.
    public func restore(_ extra: [String] = []) throws {
        try criu(
            ["restore", "-D", images, "-W", work, "--lazy-pages", "--restore-detached", "-o", "restore.log", "-v4"]
                + extra, log: "work/restore.log")
    }

    // MARK: daemons and page servers

    /// Where a lazy-pages daemon gets the pages from.
    public enum PageSource {
        case localImages
        case pageServer(port: UInt16)
    }

    /// `lazy-pagesd -D images -W work` (with `--page-server` for a remote source), ready to take the restore.
    public func startLazyPagesd(_ source: PageSource = .localImages, extra: [String] = []) throws -> PeerProcess {
        try start(
            name: "lazy-pagesd", executable: BuiltProducts.path(of: "lazy-pagesd"),
            arguments: ["-D", images, "-W", work, "-o", "lazy-pages.log", "-v4"] + remote(source) + extra)
    }

    /// CRIU's own daemon, `criu lazy-pages`, the same way.
    public func startCRIULazyPages(_ source: PageSource = .localImages) throws -> PeerProcess {
        try start(
            name: "criu-lazy-pages", executable: criu,
            arguments: ["lazy-pages", "-D", images, "-W", work, "-o", "lazy-pages.log", "-v4"] + remote(source))
    }

    /// `criu page-server --lazy-pages` serving `images`; its port. It exits once its client is done.
    public func startCRIUPageServer() throws -> (PeerProcess, UInt16) {
        let port = try freeLoopbackPort()
        let server = try start(
            name: "criu-page-server", executable: criu, arguments: Self.pageServerArguments(images: images, port: port))
        return (server, port)
    }

    /// A connected pair of sockets on which `page-server --lazy-pages --ps-socket 4` — CRIU's (`criu: true`) or
    /// ours — serves `images` and a daemon talks to it with `--ps-socket 4` (`startDaemonOnSocket`), as CRIU's RPC
    /// users hand them over: returns the page server and the daemon's end.
    public func startPageServerOnSocketPair(criu ofCRIU: Bool) throws -> (server: PeerProcess, psSocketPeer: Int32) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw Failure(description: "socketpair: errno \(errno)")
        }
        defer { close(pair[0]) }
        let server = try start(
            name: ofCRIU ? "criu-page-server" : "lazy-pages-page-server",
            executable: ofCRIU ? criu : BuiltProducts.path(of: "lazy-pages"),
            arguments: ["page-server", "--lazy-pages", "-D", images, "--ps-socket", "4", "-o", "page-server.log", "-v4"],
            extraDescriptors: [(4, .duplicate(pair[0]))])
        return (server, pair[1])
    }

    /// `lazy-pagesd` (or, `criu: true`, `criu lazy-pages`) `-D images -W work --page-server --ps-socket 4`, fd 4 a
    /// duplicate of `socket` (closed here).
    public func startDaemonOnSocket(_ socket: Int32, criu ofCRIU: Bool) throws -> PeerProcess {
        defer { close(socket) }
        return try start(
            name: ofCRIU ? "criu-lazy-pages" : "lazy-pagesd",
            executable: ofCRIU ? criu : BuiltProducts.path(of: "lazy-pagesd"),
            arguments: (ofCRIU ? ["lazy-pages"] : [])
                + ["-D", images, "-W", work, "-o", "lazy-pages.log", "-v4", "--page-server", "--ps-socket", "4"],
            extraDescriptors: [(4, .duplicate(socket))])
    }

    /// Our `lazy-pages page-server` started with the command line of `criu page-server --lazy-pages` above (as zdtm
    /// and CRIU's users start it): one session, so it too exits once its client is done.
    public func startOurPageServerAsCRIU() throws -> (PeerProcess, UInt16) {
        let port = try freeLoopbackPort()
        let server = try start(
            name: "lazy-pages-page-server", executable: BuiltProducts.path(of: "lazy-pages"),
            arguments: Self.pageServerArguments(images: images, port: port))
        return (server, port)
    }

    private static func pageServerArguments(images: String, port: UInt16) -> [String] {
        ["page-server", "--lazy-pages", "-D", images, "--address", "127.0.0.1", "--port", "\(port)",
         "-o", "page-server.log", "-v4"]
    }

    /// Our `lazy-pages page-server` serving `images` on a port of its choosing (`extra`: more options, e.g. TLS);
    /// its port. It runs until stopped.
    public func startOurPageServer(extra: [String] = []) throws -> (PeerProcess, UInt16) {
        let server = try PeerProcess(
            name: "lazy-pages-page-server", executable: BuiltProducts.path(of: "lazy-pages"),
            arguments: ["page-server", "-D", images, "--address", "127.0.0.1", "--port", "0"] + extra,
            directory: directory, readiness: .stdoutLine("page-server: listening on port "))
        peers.append(server)
        guard let port = server.readyLine.split(separator: " ").last.flatMap({ UInt16($0) }) else {
            throw Failure(description: "no port in \(server.readyLine)")
        }
        return (server, port)
    }

    private func remote(_ source: PageSource) -> [String] {
        switch source {
        case .localImages: []
        case .pageServer(let port): ["--page-server", "--address", "127.0.0.1", "--port", "\(port)"]
        }
    }

    private func start(
        name: String, executable: String, arguments: [String], extraDescriptors: [(Int32, ChildDescriptor)] = []
    ) throws -> PeerProcess {
        let peer = try PeerProcess(
            name: name, executable: executable, arguments: arguments, directory: directory,
            readiness: .statusDescriptor, extraDescriptors: extraDescriptors)
        peers.append(peer)
        return peer
    }


    // MARK: the restored workload

    /// Sends SIGUSR1 to the workload's process group: every process checks its memory.
    public func wake() { kill(-pid, SIGUSR1) }

    /// The workload's verdict line (`OK ...` or `FAIL ...`); throws if it exits without one or says nothing within
    /// `timeout` seconds (a safety net).
    public func result(timeout: Int32 = 120) throws -> String {
        let pidfd = ProcessDescriptor.open(pid)
        let gone = pidfd < 0 && errno == ESRCH
        defer { if pidfd >= 0 { close(pidfd) } }
        do {
            // Already reaped: whatever it wrote is in the fifo (a fifo without a writer would only time out).
            if gone {
                var chunk = [UInt8](repeating: 0, count: 1024)
                let n = chunk.withUnsafeMutableBytes { read(resultFD, $0.baseAddress, $0.count) }
                if n > 0, let newline = chunk[..<n].firstIndex(of: UInt8(ascii: "\n")) {
                    return String(decoding: chunk[..<newline], as: UTF8.self)
                }
                throw Failure(description: "the workload exited without the workload's result")
            }
            return try Self.readLine(resultFD, watching: pidfd >= 0 ? pidfd : nil, timeout: timeout, what: "the workload's result")
        } catch {
            throw Failure(description: "\(error)\n\(logs())")
        }
    }

    /// Reads one line from the fifo `fd`. With `watching` (a pidfd), gives up when that process exits first.
    static func readLine(_ fd: Int32, watching pidfd: Int32?, timeout: Int32, what: String) throws -> String {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(Int(timeout))
        var exited = false
        while !bytes.contains(UInt8(ascii: "\n")) {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw Failure(description: "no \(what) within \(timeout) s") }
            var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if let pidfd, !exited { entries.append(pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&entries, nfds_t(entries.count), Int32(left.components.seconds * 1000) + 1)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            if entries[0].revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 1024)
                let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(fd, raw.baseAddress, raw.count) } }
                if n > 0 {
                    bytes += chunk[..<n]
                    continue
                }
                if n == 0 { throw Failure(description: "\(what): the writer closed without a full line") }
                if errno != EAGAIN { throw Failure(description: "\(what): read errno \(errno)") }
            }
            if entries.count > 1 && entries[1].revents != 0 {
                // The process is gone; whatever it wrote is already in the fifo.
                exited = true
                var chunk = [UInt8](repeating: 0, count: 1024)
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 { bytes += chunk[..<n]; continue }
                throw Failure(description: "the workload exited without \(what)")
            }
        }
        return String(decoding: bytes.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    /// `key=value` fields of a report line.
    public static func fields(_ line: String) -> [String: String] {
        var out: [String: String] = [:]
        for word in line.split(separator: " ") {
            guard let equals = word.firstIndex(of: "=") else { continue }
            out[String(word[..<equals])] = String(word[word.index(after: equals)...])
        }
        return out
    }

    // MARK: logs

    /// The last `lines` lines of the file `name` in the run's directory.
    public func tail(_ name: String, lines: Int = 25) -> String {
        let text = (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)) ?? "(no \(name))"
        return "--- \(name):\n" + text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
            .joined(separator: "\n")
    }

    /// Every log of the run (tails), for a failure message.
    public func logs() -> String {
        var parts = [tail("workload.err"), tail("images/dump.log", lines: 10), tail("work/restore.log")]
        for peer in peers {
            parts.append("--- \(peer.name) stderr:\n" + peer.stderr.split(separator: "\n").suffix(25).joined(separator: "\n"))
        }
        for log in ["work/lazy-pages.log", "page-server.log", "images/page-server.log"]
        where FileManager.default.fileExists(atPath: directory + "/" + log) {
            parts.append(tail(log))
        }
        return parts.joined(separator: "\n")
    }
}
