import Foundation
import LinuxSupport
import Synchronization
import SystemPackage
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The platform module's errno policy and wait-status decoding, against real failed calls, a real signal that
/// interrupts a blocked `read`, and real children.
@Suite struct PlatformErrorTests {
    @Test func aFailedCallNamesItselfAndTheCLibrarysReason() throws {
        let fd = open("/nonexistent-lazy-pages-test/file", O_RDONLY)
        #expect(fd == -1)
        let error = SystemCallError("open /nonexistent-lazy-pages-test/file")
        #expect(error.errno == ENOENT)
        #expect(error.description == "open /nonexistent-lazy-pages-test/file: No such file or directory")
        #expect(SystemCallError.reason(EBADF) == "Bad file descriptor")
        #expect(error == SystemCallError("open /nonexistent-lazy-pages-test/file", errno: ENOENT))
        #expect(SystemCallError("x", .badFileDescriptor) == SystemCallError("x", errno: EBADF))
    }

    @Test func systemCallThrowsTheErrnoNamingTheCall() {
        #expect(throws: SystemCallError("close(-1)", errno: EBADF)) { try systemCall("close(-1)") { close(-1) } }
        #expect((try? systemCall("getpid") { getpid() }) == getpid())
        switch valueOrErrno({ dup(-1) }) {
        case .success(let value): Issue.record("dup(-1) returned \(value)")
        case .failure(let failure): #expect(failure == .badFileDescriptor)
        }
    }

    /// A `read` blocked on an empty pipe is interrupted by signals (a handler without `SA_RESTART`): with
    /// `retryOnInterrupt` it is called again each time and returns the byte written after at least two
    /// interruptions; without, the first interruption is the result.
    @Test(.timeLimit(.minutes(1))) func anInterruptedCallIsRetriedOnlyWhenAsked() throws {
        var previous = sigaction()
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0
        sigemptyset(&action.sa_mask)
        #expect(sigaction(SIGURG, &action, &previous) == 0)
        defer { sigaction(SIGURG, &previous, nil) }

        for retry in [true, false] {
            var fds: [Int32] = [-1, -1]
            #expect(pipe(&fds) == 0)
            defer { close(fds[0]); close(fds[1]) }
            let reader = fds[0]
            let shared = Shared()
            let worker = Thread {
                var unblock = sigset_t()
                sigemptyset(&unblock)
                sigaddset(&unblock, SIGURG)
                pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
                shared.state.withLock { $0.thread = pthread_self() }
                var byte: UInt8 = 0
                let result = valueOrErrno(retryOnInterrupt: retry) {
                    shared.state.withLock { $0.calls += 1 }
                    return read(reader, &byte, 1)
                }
                shared.state.withLock { $0.outcome = result }
            }
            worker.start()
            let deadline = ContinuousClock.now + .seconds(30)
            var wrote = false
            // Signals until the reader has been interrupted (and, retrying, called again) twice; a signal that
            // arrives before the read blocks only runs the handler.
            while shared.state.withLock({ $0.outcome == nil }) && ContinuousClock.now < deadline {
                if let target = shared.state.withLock({ $0.thread }) { pthread_kill(target, SIGURG) }
                if retry && !wrote && shared.state.withLock({ $0.calls }) >= 3 {
                    var byte: UInt8 = 42
                    #expect(write(fds[1], &byte, 1) == 1)
                    wrote = true
                }
                usleep(1000)  // pacing the signals, not synchronisation: the loop ends on the outcome
            }
            let (result, calls) = shared.state.withLock { ($0.outcome, $0.calls) }
            #expect(result != nil, "the reader never returned")
            if retry {
                #expect(result == .success(1))
                #expect(calls >= 3)
            } else {
                #expect(result == .failure(.interrupted))
                #expect(calls == 1)
            }
        }
    }

    @Test func waitStatusDecodesExitsAndSignals() throws {
        let exited = try Spawn.run(["/bin/sh", "-c", "exit 7"])
        #expect(WaitStatus(exited.status) == .exited(7))
        #expect(WaitStatus(exited.status).code == 7)
        #expect(WaitStatus(exited.status).exitCode == 7)
        #expect(WaitStatus(exited.status).description == "exit 7")
        let killed = try Spawn.run(["/bin/sh", "-c", "kill -KILL $$"])
        #expect(WaitStatus(killed.status) == .signalled(SIGKILL))
        #expect(WaitStatus(killed.status).code == -SIGKILL)
        #expect(WaitStatus(killed.status).exitCode == nil)
        #expect(WaitStatus(killed.status).description == "signal 9")
    }

    @Test func waitStatusWaitsForARealChild() throws {
        let child = try spawnChild("/bin/sh", ["-c", "exit 3"], descriptors: [(0, .null)])
        #expect(WaitStatus.wait(for: child) == .exited(3))
        #expect(WaitStatus.wait(for: child) == nil)
        #expect(errno == ECHILD)
    }
}

/// What the reader thread of `anInterruptedCallIsRetriedOnlyWhenAsked` shares with the test.
private final class Shared: Sendable {
    struct State {
        var thread: pthread_t?
        var calls = 0
        var outcome: Result<Int, Errno>?
    }
    let state = Mutex(State())
}
