import TestSupport
import Foundation
import LazyPagesEngine
import LazyPagesFirecracker
import Testing

/// Bad handshakes sent by fc-emulator for real: each is refused with an error naming what was wrong, the handler
/// does not crash, and the peer (whose memory nobody will serve) is killed rather than left to hang.
@Suite(.serialized) struct HandshakeRefusalTests {
    static let cases: [(mode: String, expected: String)] = [
        ("malformed", "(malformed JSON): not valid JSON"),
        ("overlap", "(overlapping regions): regions"),
        ("outside", "(region outside the memory file): mapping 0"),
        ("misaligned", "(misaligned region): mapping 0: size"),
        ("no-fd", "(no descriptor): no userfaultfd came with the mappings"),
        ("two-fds", "(too many descriptors): expected one descriptor (the uffd), got 2"),
        ("not-uffd", "(not a userfaultfd): the descriptor sent is anon_inode:[eventfd]"),
    ]

    @Test(.timeLimit(.minutes(20)), arguments: cases.map(\.mode))
    func aBadHandshakeIsRefusedAndThePeerKilled(mode: String) async throws { try await oneHeavyTestAtATime {
        let expected = try #require(Self.cases.first { $0.mode == mode }).expected
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:256K", "4k:256K"], handshake: mode)
        #expect(emulator.finish() == .signalled(SIGKILL), "\(emulator.lines)")
        guard case .failed(let reason) = outcome() else {
            Issue.record("\(mode) was not refused")
            return
        }
        #expect(reason.hasPrefix("Firecracker handshake refused "), "\(reason)")
        #expect(reason.contains(expected), "\(reason)")
        #expect(session.killedPeer)
        #expect(session.statistics[.tasksAnnounced] == 0)
    }}

    @Test(.timeLimit(.minutes(20))) func withoutKillingARefusedPeerSeesTheSocketClose() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let session = try fixture.session()
        session.killPeerOnFailure = false
        let outcome = start(session)
        let emulator = try Emulator(
            socket: fixture.socket, memoryFile: fixture.memoryFile, regions: ["4k:256K"], handshake: "no-fd")
        #expect(emulator.finish() == .exited(3))
        #expect(emulator.lines == ["REFUSED socket closed"])
        guard case .failed = outcome() else {
            Issue.record("no-fd was not refused")
            return
        }
        #expect(session.killedPeer == false)
    }}

    @Test(.timeLimit(.minutes(20))) func aPeerThatHangsUpSilentlyIsRefused() async throws { try await oneHeavyTestAtATime {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let session = try fixture.session()
        let outcome = start(session)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(fixture.socket.utf8) + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(connected == 0)
        close(fd)
        guard case .failed(let reason) = outcome() else {
            Issue.record("a silent hang-up was not refused")
            return
        }
        #expect(reason.contains("(hung up)"), "\(reason)")
        // The peer was this test process: it must not have been killed (it is alive to check this).
        #expect(session.killedPeer == false)
    }}
}
