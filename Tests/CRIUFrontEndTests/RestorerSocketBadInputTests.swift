import CLinuxSupport
import Foundation
import LazyPagesCRIU
import LinuxSupport
import TestSupport
import Testing
import CUserfaultfd
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// A misbehaving restorer on `lazy-pages.socket`, against the real `lazy-pagesd` binary: every case ends with a
/// clear error on stderr and exit status 1 (or, where the protocol allows it, a clean exit) — never a crash.
@Suite(.serialized) struct RestorerSocketBadInputTests {
    static let images: String = {
        let directory = try! makeTemporaryDirectory()
        try! ScenarioImages.write(to: directory)
        return directory
    }()

    /// One step of a misbehaving restorer.
    enum Step {
        case bytes([UInt8])
        case word(Int32)
        case descriptors(byte: [UInt8], [Int32])
    }

    struct Outcome {
        var status: Int32
        var stderr: String
    }

    /// Runs the daemon, connects, plays `steps`, closes, and waits for the daemon's exit.
    static func play(_ steps: [Step]) throws -> Outcome {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            // Without the guardian: the "restorer" here is the test process itself, and a guarded daemon that fails
            // with a uffd adopted would kill the restorer's descendants — every other test's children.
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", images, "-W", work, "--status-fd", "3", "--no-guardian"],
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "\(daemon.stderrText)")
        let socket = try connect(work + "/lazy-pages.socket")
        for step in steps {
            switch step {
            case .bytes(let bytes):
                _ = bytes.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            case .word(let word):
                var value = word
                _ = withUnsafeBytes(of: &value) { send(socket, $0.baseAddress, 4, Int32(MSG_NOSIGNAL)) }
            case .descriptors(let byte, let fds):
                try DescriptorPassing.send(socket: socket, bytes: byte, descriptors: fds)
            }
        }
        close(socket)
        let status = daemon.wait()
        // (A clean end prints its summary on stdout; errors go to stderr.)
        return Outcome(status: status, stderr: daemon.stderrText + daemon.stdoutText)
    }

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
            raw[path.utf8.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw LazyPagesTestError("connect \(path): \(errno)") }
        return fd
    }

    static func uffd() throws -> Userfaultfd {
        try Userfaultfd.create()
    }

    static let restoreFinished: Int32 = 0x5253_5446

    static func words(_ values: [Int32]) -> [UInt8] {
        values.flatMap { value in withUnsafeBytes(of: value) { Array($0) } }
    }

    /// (name, steps, expected exit status, expected stderr fragment). Descriptors are opened per case.
    static func cases() throws -> [(String, [Step], Int32, String)] {
        var pipeFDs: [Int32] = [-1, -1]
        _ = pipe(&pipeFDs)
        let event = eventfd(0, Int32(EFD_CLOEXEC))
        let a = try uffd(), b = try uffd(), c = try uffd(), d = try uffd()
        // Keep the uffds alive until the cases ran (the daemon gets its own copies when they are sent).
        keepAlive = [a, b, c, d]
        return [
            ("early hang-up", [], 1, "closed the lazy-pages socket before sending RSTF"),
            ("half a pid", [.bytes([100, 0])], 1, "in the middle of a pid"),
            ("a pid then EOF", [.word(100)], 1, "before sending the uffd of pid 100"),
            ("no descriptor", [.word(100), .bytes([0])], 1, "expected exactly one uffd for pid 100, got 0"),
            ("two descriptors", [.word(100), .descriptors(byte: [0], [a.descriptor, b.descriptor])], 1,
             "expected exactly one uffd for pid 100, got 2"),
            ("a pipe for a uffd", [.word(100), .descriptors(byte: [0], [pipeFDs[0]])], 1, "is not a userfaultfd (pipe:"),
            ("an eventfd for a uffd", [.word(100), .descriptors(byte: [0], [event])], 1,
             "is not a userfaultfd (anon_inode:[eventfd])"),
            ("a pid not in the images", [.word(4242), .descriptors(byte: [0], [c.descriptor])], 1,
             "pid 4242 is not a task of the images"),
            ("pid 0", [.word(0)], 1, "sent pid word 0, which names no task"),
            // A negative word is a zombie's pid negated; this one has no positive counterpart (a crash, once).
            ("the lowest pid word", [.word(Int32.min)], 1, "sent pid word -2147483648, which names no task"),
            ("a pid twice", [.word(100), .descriptors(byte: [0], [d.descriptor]), .word(100),
                             .descriptors(byte: [0], [d.descriptor])], 1, "pid 100 was announced twice"),
            // Two zombies, RSTF and garbage in one write (so the daemon reads the garbage before it is done).
            ("garbage after RSTF", [.bytes(words([-101, -100, restoreFinished]) + [1, 2, 3, 4, 5])],
             0, "ignoring 5 bytes the restorer sent after RSTF"),
            ("zombies only, RSTF split across writes", [.bytes(words([-100, -101]) + [0x46, 0x54]), .bytes([0x53, 0x52])],
             0, "lazy-pages: 2 tasks"),
        ]
    }
    nonisolated(unsafe) static var keepAlive: [Userfaultfd] = []

    @Test(.timeLimit(.minutes(2))) func everyMisbehaviourGetsAClearErrorNeverACrash() throws {
        var tried = 0
        for (name, steps, status, message) in try Self.cases() {
            let outcome = try Self.play(steps)
            tried += 1
            #expect(outcome.status == status, "\(name): exit \(outcome.status)\n\(outcome.stderr)")
            #expect(outcome.status >= 0, "\(name): the daemon died of a signal\n\(outcome.stderr)")
            #expect(outcome.stderr.contains(message), "\(name): expected '\(message)' in\n\(outcome.stderr)")
        }
        print("restorer socket bad input: \(tried) cases, 0 crashes")
        Self.keepAlive = []
    }
}
