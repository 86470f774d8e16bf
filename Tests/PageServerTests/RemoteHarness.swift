import CRIUImages
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LinuxSupport
import Logging
import PageServer
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two image sets of the same dump: the server's (LAZY|PRESENT, page data in pages files) and the client's (LAZY
/// only: everything but the lazy page data, as `criu dump --lazy-pages` leaves it). Per task: VMA A (256 pages:
/// 0..<200 lazy, 200..<216 eager, the rest never dumped), VMAs B and C (96 lazy pages each, equal for
/// mremap-swap) and VMA D (8 eager pages).
struct RemoteImages {
    static let base: UInt64 = 0x5b00_0000_0000
    static let page = UInt64(basePageSize)

    let serverDirectory: String
    let clientDirectory: String
    let workDirectory: String

    init(pids: [UInt32] = [1, 2]) throws {
        let root = try makeTemporaryDirectory()
        serverDirectory = root + "/server"
        clientDirectory = root + "/client"
        workDirectory = root + "/work"
        mkdir(workDirectory, 0o755)
        try ImageWriter.write(directory: serverDirectory, processes: Self.specs(pids: pids, lazy: [.lazy, .present]))
        try ImageWriter.write(directory: clientDirectory, processes: Self.specs(pids: pids, lazy: [.lazy]))
    }

    static func specs(pids: [UInt32], lazy: PagemapFlags) -> [ProcessSpec] {
        pids.enumerated().map { index, pid in
            let fill = PagePattern.filler(seed: 0xabc + UInt64(pid), base: base)
            let a = base, b = base + 0x20_0000, c = base + 0x40_0000, d = base + 0x60_0000
            return ProcessSpec(
                pid: pid, ppid: index == 0 ? 0 : pids[0],
                vmas: [
                    VMA(start: a, end: a + 256 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: b, end: b + 96 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: c, end: c + 96 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: d, end: d + 8 * page, prot: 3, flags: 0x22, status: 0x41),
                ],
                runs: [
                    RunSpec(address: a, pageCount: 200, flags: lazy, fill: fill),
                    RunSpec(address: a + 200 * page, pageCount: 16, flags: [.present], fill: fill),
                    RunSpec(address: b, pageCount: 96, flags: lazy, fill: fill),
                    RunSpec(address: c, pageCount: 96, flags: lazy, fill: fill),
                    RunSpec(address: d, pageCount: 8, flags: [.present], fill: fill),
                ])
        }
    }

    /// Lazy pages per task.
    static let lazyPagesPerTask = 200 + 96 + 96
}

/// The remote tests' logger: critical only (their peers fail on purpose), everything with `LP_TEST_LOG`.
let remoteLogger = testLogger("remote-test", level: .critical)

/// How one remote restore ended.
struct RemoteRestoreResult {
    var report: SimulationReport
    var outcome: RestoreOutcome
    var statistics: RestoreStatistics
    var closeStatus: Int32?
}

/// Runs one restore: a lazy-pages session on the client images fetching from `port`, the simulator restoring the
/// server images (its workloads check every byte against the full image).
func remoteRestore(
    _ images: RemoteImages, port: UInt16, host: String = "127.0.0.1", scenario: String, seed: UInt64 = 5,
    configure: (inout PageServerClientOptions) -> Void = { _ in }, timeout: Duration = .seconds(45),
    engine: EngineConfiguration = EngineConfiguration()
) throws -> RemoteRestoreResult {
    var options = PageServerClientOptions(host: host, port: port)
    options.retryDelay = 0.05
    options.stallTimeout = 5
    configure(&options)
    let client = PageServerClient(options: options, logger: remoteLogger)
    let session = try LazyPagesSession(
        imagesDirectory: images.clientDirectory, workDirectory: images.workDirectory, configuration: engine,
        remotePages: client, logger: remoteLogger)
    let statistics = session.statistics
    let finished = DispatchSemaphore(value: 0)
    let box = ResultBox()
    let thread = Thread {
        let outcome = session.run()
        box.set(outcome, client.close())
        finished.signal()
    }
    thread.start()
    let simulation = try RestoreSimulation(
        options: SimulationOptions(
            imagesDirectory: images.serverDirectory, workDirectory: images.workDirectory, scenario: scenario,
            seed: seed, timeout: timeout))
    try simulation.start()
    let report = try simulation.wait()
    if finished.wait(timeout: .now() + 30) == .timedOut {
        session.engine.cancel(reason: "test timeout")
        finished.wait()
    }
    let (outcome, status) = box.get()
    return RemoteRestoreResult(report: report, outcome: outcome!, statistics: statistics, closeStatus: status)
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var outcome: RestoreOutcome?
    private var status: Int32?
    func set(_ o: RestoreOutcome, _ s: Int32?) { lock.withLock { outcome = o; status = s } }
    func get() -> (RestoreOutcome?, Int32?) { lock.withLock { (outcome, status) } }
}

/// A restore from a page source that never completes an answer within `stallTimeout`: the client must give up after
/// `retries` retries, the restore fail naming the server (`port`) within `bound`, and every task die by SIGBUS on a
/// poisoned page — never run on, never read a zero page.
func expectRestoreGivesUp(
    _ images: RemoteImages, port: UInt16, stallTimeout: Double, retries: Int, within bound: Duration
) throws {
    let started = ContinuousClock.now
    let result = try remoteRestore(images, port: port, scenario: "verify") {
        $0.stallTimeout = stallTimeout
        $0.retries = retries
        $0.retryDelay = 0.05
    }
    let elapsed = ContinuousClock.now - started
    guard case .failed(let reason) = result.outcome else {
        Issue.record("expected a failed restore, got \(result.outcome)")
        return
    }
    #expect(reason.contains("127.0.0.1:\(port)"), "\(reason)")
    #expect(reason.contains("gave up after \(retries) retries"), "\(reason)")
    #expect(reason.contains("no answer completed for"), "\(reason)")
    #expect(elapsed < bound)
    for task in result.report.tasks {
        #expect(task.exitStatus == -SIGBUS, "\(describe(result.report))")
        #expect(!task.output.contains { $0.hasPrefix("OK") }, "\(describe(result.report))")
        #expect(!task.output.contains { $0.hasPrefix("FAIL") && $0.contains("byte=") }, "\(describe(result.report))")
    }
}
