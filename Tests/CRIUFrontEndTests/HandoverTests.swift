import Foundation
import RestoreSimulator
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A monitor restart the restored processes never notice (issue 15): the real `lazy-pagesd` is SIGKILLed at random
/// moments of a restore (`lazy-pages restore-sim` plays the restorer, lp-workload checks every byte), and its
/// guardian starts a successor (`lazy-pagesd adopt`) that continues the restore from the journal. Every round must
/// end with every task passing (a transparent completion) or — where the journal cannot vouch for the layout — with
/// the guardian ending the tasks, saying why; never a wrong page, never a hang.
@Suite(.serialized) struct HandoverTests {
    static var images: String { GuardianTests.images }

    struct Round {
        var simulator: RestoreSimOutput
        var daemonStatus: Int32
        var stderr: String
        var stdout: String
        var handedOver: Bool { stderr.contains("continuing the restore of a daemon that died") }
        var fallbackReason: String? {
            for marker in ["lp-guardian: no hand-over: ", "refused the restore ("] {
                if let range = stderr.range(of: marker, options: .backwards) {
                    return String(stderr[range.upperBound...].prefix { $0 != "\n" && $0 != ")" })
                }
            }
            return nil
        }
        var guardianKilled: Bool { stderr.contains("lp-guardian: lazy-pagesd") }
    }

    /// Waits (bounded) until every process that still writes the daemon's stderr — the successor and the guardians,
    /// none of them our children — is gone: the successor's pid is in the pid file, which it rewrites.
    static func waitForSuccessors(work: String, first: pid_t) {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let pid = (try? String(contentsOfFile: work + "/pid", encoding: .utf8)).flatMap {
                pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            guard let pid, pid != first, kill(pid, 0) == 0 else { break }
            usleep(2000)
        }
        GuardianTests.waitForGuardian(daemonStderr: (try? String(contentsOfFile: work + "/daemon.err", encoding: .utf8)) ?? "")
    }

    /// Starts the daemon and the simulator; once the daemon logged `logLine` (the restorer connected), waits `delayMicroseconds` (or, with the
    /// fault injection, until the daemon stopped itself) and SIGKILLs the daemon — and, with `killSuccessor`, the
    /// successor too once it runs.
    static func killDaemon(
        scenario: String, seed: UInt64, delayMicroseconds: UInt32, daemonArguments: [String] = [],
        environment: [String] = [], stopsItself: Bool = false, killSuccessor: Bool = false,
        after logLine: String = "restorer connected"
    ) throws -> Round {
        let work = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let daemon = try ChildProcess(
            "/usr/bin/env",
            environment + [try BuiltProducts.path(of: "lazy-pagesd"), "-D", images, "-W", work, "--status-fd", "3", "-v3",
                           "--pidfile", work + "/pid"] + daemonArguments,
            directory: work, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "daemon did not start: \(daemon.stderrText)")
        let simulator = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["restore-sim", "-D", images, "-W", work, "--scenario", scenario, "--seed", "\(seed)", "--timeout", "90",
             "--workload", try BuiltProducts.path(of: "lp-workload")],
            directory: work, name: "sim")
        // Polls the daemon's log (a safety-net deadline bounds it).
        let deadline = ContinuousClock.now + .seconds(30)
        while !daemon.stderrText.contains(logLine) && ContinuousClock.now < deadline { usleep(500) }
        if stopsItself {
            while ContinuousClock.now < deadline,
                  let stat = try? String(contentsOfFile: "/proc/\(daemon.pid)/stat", encoding: .utf8),
                  !stat.contains(") T ") { usleep(500) }
        } else {
            usleep(delayMicroseconds)  // the random moment of the crash (not a synchronisation)
        }
        kill(daemon.pid, SIGKILL)
        let status = daemon.wait()
        if killSuccessor {
            let until = ContinuousClock.now + .seconds(30)
            while !daemon.stderrText.contains("continuing the restore") && ContinuousClock.now < until { usleep(500) }
            usleep(delayMicroseconds)
            if let text = try? String(contentsOfFile: work + "/pid", encoding: .utf8),
               let successor = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), successor != daemon.pid {
                kill(successor, SIGKILL)
            }
        }
        simulator.wait()
        waitForSuccessors(work: work, first: daemon.pid)
        return Round(simulator: RestoreSimOutput(simulator.stdoutText), daemonStatus: status,
                     stderr: daemon.stderrText, stdout: (try? String(contentsOfFile: daemon.stdoutPath, encoding: .utf8)) ?? "")
    }

    /// A daemon stopped by fault injection and killed there was continued: no wrong page, no hang, killed by the
    /// test, handed over without a fallback, the successor's log has every line of `logging`, both tasks passed and
    /// the successor printed the restore's summary.
    static func expectContinuedAfterInjection(_ round: Round, logging: [String]) {
        let context = "\(round.simulator.text)\n\(round.stderr.suffix(6000))"
        #expect(round.simulator.wrongPageLines.isEmpty, "\(context)")
        #expect(!round.simulator.timedOut, "\(context)")
        #expect(round.daemonStatus == -SIGKILL, "\(context)")
        #expect(round.handedOver, "\(context)")
        #expect(round.fallbackReason == nil, "\(context)")
        for line in logging { #expect(round.stderr.contains(line), "\(context)") }
        #expect(round.simulator.taskStatuses.count == 2 && round.simulator.taskStatuses.allSatisfy { $0 == 0 },
                "\(context)")
        #expect(round.stdout.contains("lazy-pages: 2 tasks"), "\(context)\n\(round.stdout)")
    }

    @Test(.timeLimit(.minutes(20))) func daemonKilledAtRandomMomentsIsContinuedByASuccessor() async throws { try await oneHeavyTestAtATime {
        let cases: [(String, Bool)] = [
            ("fork-storm", true), ("uffd-events", false), ("verify", true), ("fork2-storm", false),
            ("threads16", true), ("uffd-events", true), ("fork-storm", false), ("verify", false),
        ]
        let environment = ProcessInfo.processInfo.environment
        let kills = Int(environment["LP_HANDOVER_KILLS"] ?? "") ?? 10
        var rng = SeededRandom(seed: UInt64(environment["LP_HANDOVER_SEED"] ?? "") ?? 15)
        var transparent = 0, fallbacks: [String] = []
        for index in 0..<kills {
            let (scenario, faultOnly) = cases[index % cases.count]
            let delay = UInt32(rng.next() % 40_000)
            let twice = index % 4 == 3
            let round = try Self.killDaemon(
                scenario: scenario, seed: UInt64(index + 1), delayMicroseconds: delay,
                daemonArguments: faultOnly ? ["--no-background"] : [], killSuccessor: twice)
            let context = "\(scenario) delay=\(delay)µs faultOnly=\(faultOnly) twice=\(twice)\n\(round.simulator.text)\n\(round.stderr.suffix(6000))"
            #expect(round.daemonStatus == -SIGKILL || round.daemonStatus == 0, "\(context)")
            #expect(round.simulator.wrongPageLines.isEmpty, "a process ran on with a wrong page: \(context)")
            #expect(!round.simulator.timedOut, "a process hung: \(context)")
            let statuses = round.simulator.taskStatuses
            #expect(statuses.count == 2, "\(context)")
            if statuses.allSatisfy({ $0 == 0 }) {
                if round.handedOver {
                    transparent += 1
                    // The successor finished the restore: its summary on the daemon's stdout, no failure.
                    #expect(round.stdout.contains("lazy-pages: 2 tasks"), "\(context)\n\(round.stdout)")
                    #expect(!round.stderr.contains("restore failed"), "\(context)")
                }
            } else {
                // The fallback: the guardian ended the tasks, and said why there was no hand-over.
                #expect(statuses.allSatisfy { $0 == 0 || $0 == -SIGKILL }, "\(context)")
                #expect(round.guardianKilled, "killed, but not by the guardian: \(context)")
                #expect(round.fallbackReason != nil, "a fallback without a reason: \(context)")
                fallbacks.append(round.fallbackReason ?? "?")
            }
        }
        print("hand-over: \(kills) daemon kills, \(transparent) continued transparently, \(fallbacks.count) fell back (\(fallbacks)), 0 wrong pages")
        #expect(transparent >= kills * 3 / 4, "only \(transparent) of \(kills) kills were continued: \(fallbacks)")
    }}

    /// Fault injection: the daemon stops between reading an event and recording it, and is killed there — the first
    /// event (a fork: the child's uffd is known only from the message) or a later one of a fork storm, after others
    /// were recorded. The messages are in the journal's read area: the successor records the missing event and
    /// continues, every byte right (before the read area, this case ended the processes: "reading-events").
    @Test(.timeLimit(.minutes(20)), arguments: [1, 7])
    func killedBetweenReadingAnEventAndRecordingItIsContinued(event: Int) async throws { try await oneHeavyTestAtATime {
        let round = try Self.killDaemon(
            scenario: "fork-storm", seed: 3, delayMicroseconds: 0, daemonArguments: ["--no-background"],
            environment: ["LP_FAULT_STOP_BEFORE_RECORDING_EVENT=\(event)"], stopsItself: true)
        Self.expectContinuedAfterInjection(round, logging: [
            "the predecessor died in a read of events: recorded what it had not", "eventsRecorded=1",
        ])
    }}

    /// Fault injection: the daemon stops right after taking a word of CRIU's protocol from the restorer's socket
    /// into the journal's word area, before recording what it said, and is killed there — the first task's pid
    /// (its uffd comes next), and RSTF (the third word of a two-task restore). The successor records the word and
    /// continues, every byte right (before the word area, such a kill ended the processes: "reading-events").
    @Test(.timeLimit(.minutes(20)), arguments: [1, 3])
    func killedHoldingARestorerWordIsContinued(word: Int) async throws { try await oneHeavyTestAtATime {
        let round = try Self.killDaemon(
            scenario: "verify", seed: 4, delayMicroseconds: 0, daemonArguments: ["--no-background"],
            environment: ["LP_FAULT_STOP_AFTER_TAKING_WORD=\(word)"], stopsItself: true, after: "guardian started")
        Self.expectContinuedAfterInjection(round, logging: [
            "the predecessor died holding a word of the restorer's: recorded it",
        ])
    }}

    /// `--no-handover`: a daemon killed mid-restore has its processes ended by the guardian, as before hand-over.
    @Test(.timeLimit(.minutes(20))) func noHandoverEndsTheProcesses() async throws { try await oneHeavyTestAtATime {
        let round = try Self.killDaemon(
            scenario: "verify", seed: 2, delayMicroseconds: 2_000, daemonArguments: ["--no-background", "--no-handover"],
            after: "all tasks announced")
        let context = "\(round.simulator.text)\n\(round.stderr.suffix(6000))"
        #expect(round.simulator.wrongPageLines.isEmpty, "\(context)")
        #expect(!round.handedOver, "\(context)")
        // Every task the simulator reports was killed. It reports none when the fork came before its second task
        // was announced: the guardian then closed its connection too, and its own restore failed.
        #expect(round.simulator.taskStatuses.allSatisfy { $0 == -SIGKILL }, "\(context)")
        #expect(round.guardianKilled, "\(context)")
    }}
}
