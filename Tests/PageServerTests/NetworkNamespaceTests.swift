import Foundation
import LinuxSupport
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Our server ↔ our client across two network namespaces joined by a veth pair: the built `lazy-pages page-server`
/// runs in namespace A, the built `lazy-pagesd --page-server` in namespace B, and `lazy-pages restore-sim` (in the
/// root namespace: it needs only the daemon's unix socket) plays the restore with workloads that check every byte
/// against the full image. Needs CAP_NET_ADMIN (CI runs as root): without it the test fails, it does not skip.
@Suite("Remote restores across network namespaces", .serialized, .timeLimit(.minutes(20)))
struct NetworkNamespaceTests {
    @Test("scenarios restore every byte from a page server in another network namespace",
          arguments: ["fork-storm", "mremap-swap", "madvise"])
    func scenarioAcrossVeth(_ scenario: String) async throws { try await oneHeavyTestAtATime {
        let lazyPages = try BuiltProducts.path(of: "lazy-pages")
        let daemonBinary = try BuiltProducts.path(of: "lazy-pagesd")
        let images = try RemoteImages()
        let network = try VethNamespaces()
        defer { network.remove() }

        let server = try NamespacedChild.start(
            namespace: network.serverNamespace,
            // -v3: info, for the "client connected" lines (CRIU's default level, 2, logs warnings only).
            [lazyPages, "page-server", "-D", images.serverDirectory, "--address", network.serverAddress, "--port", "0",
             "-v3"],
            readiness: .outputLine, outputFile: images.workDirectory + "/page-server.err")
        defer { server.stop() }
        let port = try #require(
            server.readyLine.split(separator: " ").last.flatMap { UInt16($0) },
            "page server did not report its port: '\(server.readyLine)'")

        let daemon = try NamespacedChild.start(
            namespace: network.clientNamespace,
            [daemonBinary, "-D", images.clientDirectory, "-W", images.workDirectory, "--status-fd", "3",
             "-o", "daemon.log", "-v4", "--page-server", "--address", network.serverAddress, "--port", String(port),
             "--retries", "2", "--retry-delay", "0.1", "--stall-timeout", "10"],
            readiness: .statusByte)
        defer { daemon.stop() }

        let restore = try Spawn.run(
            [lazyPages, "restore-sim", "-D", images.serverDirectory, "-W", images.workDirectory, "--scenario", scenario,
             "--timeout", "60"],
            timeoutMilliseconds: 90_000)
        #expect(restore.exitCode == 0, "restore-sim: \(restore.stdout)\n\(restore.stderr)")
        #expect(restore.stdout.contains("restore-sim: all "), "\(restore.stdout)")
        #expect(!restore.stdout.contains("FAILED"), "\(restore.stdout)")

        let (status, output) = daemon.wait(timeoutSeconds: 60)
        #expect(status == 0, "lazy-pagesd exit status \(status): \(output)")
        #expect(output.contains("lazy-pages: 2 tasks"), "no summary from lazy-pagesd: \(output)")
        let log = (try? String(contentsOfFile: images.workDirectory + "/daemon.log", encoding: .utf8)) ?? ""
        #expect(log.contains("restore finished"), "daemon log: \(log.suffix(2000))")

        // The pages really crossed the veth: the server saw the client's address, and its end of the pair sent at
        // least every lazy page of both tasks.
        server.stop()
        let serverLog = (try? String(contentsOfFile: images.workDirectory + "/page-server.err", encoding: .utf8)) ?? ""
        #expect(serverLog.contains("client connected") && serverLog.contains(network.clientAddress),
                "page server log: \(serverLog.suffix(2000))")
        // (madvise drops some pages before they are fetched, so not every lazy page of both tasks need cross.)
        let sent = try network.transmittedBytes(namespace: network.serverNamespace)
        #expect(sent >= RemoteImages.lazyPagesPerTask * 4096, "only \(sent) bytes left namespace A")
    }}
}

/// Two fresh network namespaces `lp-test-<pid>-<random>-a` / `-b` joined by a veth pair, with addresses from
/// 10.0.0.0/8 set inside the namespaces only (the root namespace is never touched). `remove()` deletes both, which
/// deletes the pair. Leftovers of earlier runs whose creating process is gone are deleted first.
final class VethNamespaces {
    static let prefix = "lp-test-"
    let serverNamespace: String
    let clientNamespace: String
    let serverAddress: String
    let clientAddress: String
    private var created: [String] = []

    init() throws {
        Self.removeLeftovers()
        let tag = "\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        serverNamespace = Self.prefix + tag + "-a"
        clientNamespace = Self.prefix + tag + "-b"
        let net = "10.\(UInt8.random(in: 16...250)).\(UInt8.random(in: 0...255))"
        serverAddress = net + ".1"
        clientAddress = net + ".2"
        do {
            for namespace in [serverNamespace, clientNamespace] {
                try Self.ip(["netns", "add", namespace])
                created.append(namespace)
            }
            // Both ends are created directly inside their namespaces.
            try Self.ip([
                "link", "add", "lp-veth-a", "netns", serverNamespace, "type", "veth",
                "peer", "name", "lp-veth-b", "netns", clientNamespace,
            ])
            for (namespace, device, address) in [
                (serverNamespace, "lp-veth-a", serverAddress), (clientNamespace, "lp-veth-b", clientAddress),
            ] {
                try Self.ip(["-n", namespace, "addr", "add", address + "/30", "dev", device])
                try Self.ip(["-n", namespace, "link", "set", device, "up"])
                try Self.ip(["-n", namespace, "link", "set", "lo", "up"])
            }
        } catch {
            remove()
            throw error
        }
    }

    func remove() {
        for namespace in created { _ = try? Self.ip(["netns", "delete", namespace]) }
        created = []
    }

    /// Bytes sent by the veth end inside `namespace` (its kernel counters).
    func transmittedBytes(namespace: String) throws -> Int {
        let device = namespace == serverNamespace ? "lp-veth-a" : "lp-veth-b"
        let text = try Self.ip(["-n", namespace, "-s", "-j", "link", "show", "dev", device])
        let links = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        let stats = try #require(links.first?["stats64"] as? [String: Any], "no stats64 in \(text)")
        let tx = try #require(stats["tx"] as? [String: Any], "no tx in \(text)")
        return try #require(tx["bytes"] as? Int, "no tx bytes in \(text)")
    }

    /// Deletes `lp-test-*` namespaces left by runs that died before cleaning up (their creator's pid is gone), so
    /// that a concurrent run elsewhere on the machine keeps its own.
    static func removeLeftovers() {
        guard let list = try? ip(["netns", "list"]) else { return }
        for line in list.split(separator: "\n") {
            guard let name = line.split(separator: " ").first.map(String.init), name.hasPrefix(prefix) else { continue }
            let owner = name.dropFirst(prefix.count).split(separator: "-").first.flatMap { pid_t($0) }
            if let owner, owner != getpid(), kill(owner, 0) == 0 || errno == EPERM { continue }
            _ = try? ip(["netns", "delete", name])
        }
    }

    static let tool = Spawn.tool("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") ?? "ip"

    /// Runs `ip ARGS`; throws with its error output unless it exits 0.
    @discardableResult
    static func ip(_ arguments: [String]) throws -> String {
        let output = try Spawn.run([tool] + arguments)
        guard output.exitCode == 0 else {
            throw NamespaceError(description: "ip \(arguments.joined(separator: " ")) exited \(output.exitCode.map(String.init) ?? "by signal"): "
                + output.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                + " (network namespaces need root / CAP_NET_ADMIN and iproute2)")
        }
        return output.stdout
    }
}

struct NamespaceError: Error, CustomStringConvertible {
    let description: String
}

/// A program started in a network namespace with `ip netns exec NS PROGRAM...` (which execs the program, so the
/// pid is the program's), started with posix_spawn (the test process is never forked).
final class NamespacedChild {
    enum Readiness {
        /// The first line on stdout (the page server's "listening on port N"); its stderr goes to `outputFile`.
        case outputLine
        /// One byte on descriptor 3 (`--status-fd 3`); stdout and stderr share one pipe, read by `wait`.
        case statusByte
    }

    let pid: pid_t
    private(set) var readyLine = ""
    private var outputPipe: Int32
    private var reaped: Int32?

    private init(pid: pid_t, outputPipe: Int32) {
        self.pid = pid
        self.outputPipe = outputPipe
    }

    static func start(
        namespace: String, _ argv: [String], readiness: Readiness, outputFile: String = "/dev/null",
        timeoutMilliseconds: Int32 = 30_000
    ) throws -> NamespacedChild {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        var output: [Int32] = [-1, -1]
        var status: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type, 0, &output) == 0, socketpair(AF_UNIX, type, 0, &status) == 0 else {
            throw NamespaceError(description: "socketpair: errno \(errno)")
        }
        // The spawning thread's blocked signals (the test runner blocks SIGTERM on its threads) must not be
        // inherited, or the child could never be stopped with SIGTERM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        switch readiness {
        case .outputLine:
            posix_spawn_file_actions_addopen(&actions, 2, outputFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        case .statusByte:
            posix_spawn_file_actions_adddup2(&actions, output[1], 2)
            posix_spawn_file_actions_adddup2(&actions, status[1], 3)
        }
        let full = [VethNamespaces.tool, "netns", "exec", namespace] + argv
        var pid: pid_t = 0
        let rc = withCStrings(full) { posix_spawn(&pid, full[0], &actions, &attributes, $0, environ) }
        close(output[1])
        close(status[1])
        defer { close(status[0]) }
        guard rc == 0 else {
            close(output[0])
            throw NamespaceError(description: "posix_spawn \(full[0]): errno \(rc)")
        }
        let child = NamespacedChild(pid: pid, outputPipe: output[0])
        do {
            switch readiness {
            case .outputLine:
                var line: [UInt8] = []
                while line.last != UInt8(ascii: "\n") {
                    guard let byte = try readByte(output[0], timeoutMilliseconds) else {
                        throw NamespaceError(description: "\(argv[0]) ended before it was ready: '\(String(decoding: line, as: UTF8.self))'")
                    }
                    line.append(byte)
                }
                child.readyLine = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            case .statusByte:
                guard let byte = try readByte(status[0], timeoutMilliseconds), byte == 0 else {
                    let (code, text) = child.wait(timeoutSeconds: 10)
                    throw NamespaceError(description: "\(argv[0]) never signalled readiness (exit \(code)): \(text)")
                }
            }
        } catch {
            child.stop()
            throw error
        }
        return child
    }

    /// One byte, nil at end of file; throws after the timeout.
    private static func readByte(_ fd: Int32, _ timeoutMilliseconds: Int32) throws -> UInt8? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = retryingOnInterrupt { poll(&entry, 1, timeoutMilliseconds) }
            guard ready > 0 else { throw NamespaceError(description: "no readiness within \(timeoutMilliseconds) ms") }
            var byte: UInt8 = 0
            let n = retryingOnInterrupt { read(fd, &byte, 1) }
            return n == 1 ? byte : nil
        }
    }

    /// Reads the output pipe to its end (the program exited), then reaps it: exit code (or -signal) and output.
    /// After `timeoutSeconds` without the program ending it is killed.
    func wait(timeoutSeconds: Int32) -> (Int32, String) {
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var entry = pollfd(fd: outputPipe, events: Int16(POLLIN), revents: 0)
        while outputPipe >= 0 {
            let ready = retryingOnInterrupt { poll(&entry, 1, timeoutSeconds * 1000) }
            if ready == 0 {
                kill(pid, SIGKILL)
                text += Array("\n[killed after \(timeoutSeconds) s]".utf8)
                break
            }
            let n = buffer.withUnsafeMutableBytes { raw in
                retryingOnInterrupt { read(outputPipe, raw.baseAddress, raw.count) }
            }
            if n <= 0 { break }
            text += buffer[..<n]
        }
        let status = reap()
        return (status, String(decoding: text, as: UTF8.self))
    }

    /// Ends the program (SIGTERM; SIGKILL if it is still there after 10 s) unless it was reaped already.
    func stop() {
        if reaped == nil {
            kill(pid, SIGTERM)
            _ = wait(timeoutSeconds: 10)
        }
    }

    private func reap() -> Int32 {
        if let reaped { return reaped }
        let code = WaitStatus(waitpidRetrying(pid) ?? -1).code
        reaped = code
        if outputPipe >= 0 {
            close(outputPipe)
            outputPipe = -1
        }
        return code
    }
}
