import LinuxSupport
import Foundation
import LazyPagesCRIU
import LazyPagesFirecracker
import TestSupport
import Testing

/// The VM a failed restore kills is held by a pidfd taken when it connected (`SO_PEERPIDFD`), not looked up by its
/// pid later: a pid can be reused once its process is gone (issue 13, finding 3).
@Suite struct PeerProcessTests {
    /// A peer that connected and is gone (exited and reaped, its pid free for reuse) before we look at it: with
    /// `pidfd_open(pid)` that was an error (or, after reuse, a stranger's pidfd); the connect-time pidfd still names
    /// the dead peer, so it is reported as gone and no signal reaches anyone.
    @Test(.timeLimit(.minutes(1))) func aPeerGoneBeforeWeLookIsNeverConfusedWithAnotherProcess() throws {
        let directory = try TemporaryDirectory("lp-peer")
        let listener = try UnixListener(directory: directory.path, name: "vm.sock")
        let child = try spawnChild(try BuiltProducts.path(of: "lp-socket-client"), [listener.path, "1"],
                                   descriptors: [(0, .null), (1, .null), (2, .null)])
        #expect(waitpidRetrying(child) == 0)
        let connection = try #require(try listener.accept())
        defer { close(connection) }
        let peer = try PeerProcess(socket: connection)
        #expect(peer.pid == child)
        #expect(!peer.isAlive)
        #expect(!peer.send(SIGKILL))
    }
}
