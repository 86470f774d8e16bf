import Foundation
import TestSupport

/// Real users for one test, made with `useradd` and removed again (`userdel`, `groupdel`) when the value goes:
/// `memberA` and `memberB` are in `group` (the group given the control socket, standing for `lazy-pages`), `outsider`
/// is not. Each has a user group of its own (its primary gid). Commands run as one with `setpriv --init-groups`.
final class TestUsers {
    struct User {
        let name: String
        let uid: uid_t
        let gid: gid_t
    }

    let group: String
    let gid: gid_t
    let memberA: User
    let memberB: User
    let outsider: User

    init() throws {
        let suffix = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        group = "lpsec-g-\(suffix)"
        try Self.run(["groupadd", group])
        guard let entry = getgrnam(group) else { throw Emulator.Failure(description: "no group \(group) after groupadd") }
        gid = entry.pointee.gr_gid
        let group = self.group
        func user(_ name: String, inGroup: Bool) throws -> User {
            try TestUsers.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", "-d", "/nonexistent"]
                + (inGroup ? ["-G", group] : []) + [name])
            guard let entry = getpwnam(name) else { throw Emulator.Failure(description: "no user \(name) after useradd") }
            return User(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
        }
        memberA = try user("lpsec-a-\(suffix)", inGroup: true)
        memberB = try user("lpsec-b-\(suffix)", inGroup: true)
        outsider = try user("lpsec-o-\(suffix)", inGroup: false)
    }

    deinit {
        for user in [memberA, memberB, outsider] { _ = try? Spawn.run(["userdel", user.name]) }
        _ = try? Spawn.run(["groupdel", group])
    }

    private static func run(_ argv: [String]) throws {
        let output = try Spawn.run(argv)
        guard output.exitCode == 0 else { throw Emulator.Failure(description: "\(argv): \(output.stderr)") }
    }

    /// `argv` prefixed to run as `user` with its groups from the group database.
    static func asUser(_ user: User, _ argv: [String]) -> [String] {
        ["setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups"] + argv
    }
}

/// `lp-socket-client`: holds connections to a unix socket as some user until it is let go.
final class HeldConnections {
    private let pid: pid_t
    private let input: Int32
    let connected: Int
    let failures: String

    init(_ path: String, count: Int, line: String? = nil, as user: TestUsers.User) throws {
        var toChild: [Int32] = [-1, -1]
        var fromChild: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &toChild) == 0, socketpair(AF_UNIX, type, 0, &fromChild) == 0 else {
            throw Emulator.Failure(description: "socketpair: errno \(errno)")
        }
        let argv = TestUsers.asUser(user, [try BuiltProducts.path(of: "lp-socket-client"), path, "\(count)"]
            + (line.map { [$0] } ?? []))
        pid = try spawnChild("/usr/bin/setpriv", Array(argv.dropFirst()),
                             descriptors: [(0, .duplicate(toChild[1])), (1, .duplicate(fromChild[1])), (2, .null)])
        close(toChild[1])
        close(fromChild[1])
        input = toChild[0]
        defer { close(fromChild[0]) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256)
        while true {
            let text = String(decoding: output, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("connected ") }), text.hasSuffix("\n") {
                connected = Int(line.dropFirst("connected ".count)) ?? -1
                break
            }
            var poller = pollfd(fd: fromChild[0], events: Int16(POLLIN), revents: 0)
            let n = poll(&poller, 1, 60_000) > 0 ? chunk.withUnsafeMutableBytes { read(fromChild[0], $0.baseAddress, $0.count) } : 0
            guard n > 0 else { throw Emulator.Failure(description: "lp-socket-client said \(text)") }
            output += chunk[..<n]
        }
        /// What it printed before "connected".
        failures = String(decoding: output, as: UTF8.self)
    }

    /// Closes every connection (the helper exits).
    func release() {
        close(input)
        _ = waitpidRetrying(pid)
    }

    deinit { if fcntl(input, F_GETFD) >= 0 { release() } }
}
