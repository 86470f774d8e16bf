import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The scripts these tests run (`Scripts/systemd-serve-restart`, `systemd-serve-safety`) end their helpers with
/// `kill`, so what `Spawn.run` starts must obey SIGTERM whatever the spawning thread blocks. The test runner's threads
/// block most signals and a child inherits the spawning thread's mask: before `SpawnAttributes`, the whole script
/// ran with SIGTERM blocked, its `kill` of the VM's stdin holder stayed pending, and the VM of the re-adopted
/// Firecracker job waited on its stdin forever (issue 15; the script's dump: state S, wchan `anon_pipe_read`, SigBlk
/// with SIGTERM set). Here the test blocks SIGTERM on its own thread first, so the child would inherit it.
@Suite struct SpawnedScriptSignalTests {
    /// Runs `body` with SIGTERM blocked on the calling thread, then puts the thread's mask back.
    static func withSIGTERMBlocked<T>(_ body: () throws -> T) rethrows -> T {
        var term = sigset_t(), old = sigset_t()
        sigemptyset(&term)
        sigaddset(&term, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &term, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        return try body()
    }

    @Test func aSpawnedScriptStartsWithAnEmptySignalMask() throws {
        let output = try Self.withSIGTERMBlocked {
            try Spawn.run(["/bin/sh", "-c", "exec grep '^SigBlk:' /proc/self/status"])
        }
        #expect(output.exitCode == 0, "\(output.stderr)")
        #expect(output.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "SigBlk:\t0000000000000000")
    }

    /// A shell that sends itself SIGTERM ends there (the signal is delivered before `kill` returns): it never gets to
    /// say it survived.
    @Test func aSpawnedScriptObeysSIGTERM() throws {
        let output = try Self.withSIGTERMBlocked {
            try Spawn.run(["/bin/sh", "-c", "kill -TERM $$; echo survived"])
        }
        #expect(output.status & 0x7f == SIGTERM, "status \(output.status)")
        #expect(!output.stdout.contains("survived"))
    }
}
