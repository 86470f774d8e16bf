import LinuxSupport
import TestSupport
import Glibc
import Userfaultfd

/// One running `uffd-testee` process: the faulting party of a test, driven step by step over a
/// `SOCK_SEQPACKET` socket (see the protocol at the top of `Sources/uffd-testee/main.c`).
///
/// The testee is started with `posix_spawn` (the test process is never forked). On start it sends its uffd, which
/// this object adopts as `uffd`. Deinitializing kills and reaps a testee that is still running.
final class Testee {
    /// A reply: the words of its text line and the binary payload that followed the line.
    struct Reply {
        var words: [String]
        var payload: [UInt8]
        func int(_ index: Int) throws -> Int { try requireValue(Int(words[index]), "word \(index) of \(words)") }
        func hex(_ index: Int) throws -> UInt64 {
            try requireValue(UInt64(words[index], radix: 16), "word \(index) of \(words)")
        }
    }

    struct ProtocolError: Error, CustomStringConvertible {
        let description: String
    }

    let pid: pid_t
    let pageCount: Int
    let pageSize: Int
    /// The region's current start (changes after `mremap`).
    var base: UInt64
    /// The testee's uffd, received over `SCM_RIGHTS`.
    let uffd: Userfaultfd

    private let socket: Int32
    private var stash: [Reply] = []
    private var reaped = false

    /// Replies and events are expected within this many milliseconds; a safety net only.
    static let timeoutMilliseconds: Int32 = 10_000

    init(pages: Int) throws {
        let path = try BuiltProducts.path(of: "uffd-testee")
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0
        else { throw ProtocolError(description: "socketpair: errno \(errno)") }
        defer { close(pair[1]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], 3)
        let argv = [path, "3", String(pages)]
        var child: pid_t = 0
        let rc = withCStrings(argv) { posix_spawn(&child, path, &actions, nil, $0, environ) }
        guard rc == 0 else {
            close(pair[0])
            throw ProtocolError(description: "posix_spawn \(path): errno \(rc)")
        }
        pid = child
        socket = pair[0]
        pageCount = pages

        let (ready, descriptor) = try Testee.receiveReady(socket)
        guard ready.words.first == "ready", ready.words.count == 5, let fd = descriptor else {
            kill(child, SIGKILL)
            _ = waitpidRetrying(child)
            close(pair[0])
            throw ProtocolError(description: "bad ready message \(ready.words)")
        }
        uffd = Userfaultfd(adopting: fd)
        base = UInt64(ready.words[1], radix: 16) ?? 0
        pageSize = Int(ready.words[3]) ?? 0
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            _ = waitpidRetrying(pid)
        }
        close(socket)
    }

    /// The address of page `index` of the region.
    func address(ofPage index: Int) -> UInt64 { base + UInt64(index * pageSize) }

    /// The range of `count` pages starting at page `index`.
    func range(page index: Int, count: Int = 1) -> AddressRange {
        AddressRange(start: address(ofPage: index), length: UInt64(count * pageSize))
    }

    func send(_ command: String) throws {
        let sent = command.withCString { Glibc.send(socket, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        guard sent >= 0 else { throw ProtocolError(description: "send \(command): errno \(errno)") }
    }

    /// The next reply whose first word is `tag`; replies with other tags are kept for later calls.
    func receive(_ tag: String) throws -> Reply {
        if let index = stash.firstIndex(where: { $0.words.first == tag }) { return stash.remove(at: index) }
        while true {
            let reply = try Testee.receiveOne(socket).0
            if reply.words.first == "error" { throw ProtocolError(description: "testee failed: \(reply.words)") }
            if reply.words.first == tag { return reply }
            stash.append(reply)
        }
    }

    /// Sends `command` and returns the reply tagged `tag`.
    func request(_ command: String, expect tag: String) throws -> Reply {
        try send(command)
        return try receive(tag)
    }

    /// Waits for the testee to exit (it must have been told to) and returns its raw wait status.
    func waitForExit() throws -> Int32 {
        let status = waitpidRetrying(pid)
        reaped = true
        guard let status else { throw ProtocolError(description: "waitpid \(pid): errno \(errno)") }
        return status
    }

    // MARK: Socket plumbing

    private static func receiveReady(_ socket: Int32) throws -> (Reply, Int32?) { try receiveOne(socket) }

    /// Receives one message (and a passed descriptor, if any), waiting at most `timeoutMilliseconds`.
    private static func receiveOne(_ socket: Int32) throws -> (Reply, Int32?) {
        var pfd = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        let ready = retryingOnInterrupt { poll(&pfd, 1, timeoutMilliseconds) }
        guard ready > 0 else { throw ProtocolError(description: "no reply from the testee within the timeout") }

        let received: DescriptorPassing.Received
        do {
            received = try DescriptorPassing.receive(socket: socket, maxBytes: 65536)
        } catch {
            throw ProtocolError(description: "the testee hung up (\(error))")
        }
        guard !received.bytes.isEmpty else { throw ProtocolError(description: "the testee hung up (end of file)") }
        let descriptor = received.descriptors.first
        let bytes = received.bytes
        let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) ?? bytes.endIndex
        let text = String(decoding: bytes[..<newline], as: UTF8.self)
        let payload = newline < bytes.endIndex ? Array(bytes[(newline + 1)...]) : []
        return (Reply(words: text.split(separator: " ").map(String.init), payload: payload), descriptor)
    }
}

/// Unwraps `value` or throws naming `what` (for use inside throwing helpers).
func requireValue<T>(_ value: T?, _ what: String) throws -> T {
    guard let value else { throw Testee.ProtocolError(description: "cannot parse \(what)") }
    return value
}
