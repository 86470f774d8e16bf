import LinuxSupport
import CRIUImages
import Foundation

/// One workload of the CRIU comparison (scenario `criu`): the same real dump restored lazily by `criu lazy-pages`
/// and by lazy-pagesd, alternating, `rounds` times each.
public struct CRIUComparison: Sendable, Codable {
    /// `idle`, `fork`, `random` or `remote` (the idle workload, pages from a page server over loopback).
    public var workload: String
    public var bytes: Int
    public var criu: [CRIURestoreResult] = []
    public var ours: [CRIURestoreResult] = []
    /// /proc/loadavg before the first and after the last restore.
    public var loadAtStart: String
    public var loadAtEnd: String = ""

    public var criuMedian: Double { median(criu.map(\.seconds)) }
    public var oursMedian: Double { median(ours.map(\.seconds)) }
    /// CRIU's median time over ours: how many times faster lazy-pagesd is.
    public var speedup: Double { oursMedian > 0 ? criuMedian / oursMedian : .nan }
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The workloads of the CRIU comparison, in the order they run.
public let criuWorkloads = ["idle", "fork", "random", "remote"]

extension BenchSuite {
    /// Dumps `workload` once with the real CRIU and restores it `criuRounds` times with each daemon, alternating
    /// which goes first. Sizes: the image size for idle, random and remote; a quarter of it for fork.
    func criuComparison(_ workload: String, scratch: String) throws -> CRIUComparison {
        let c = configuration
        for path in [c.criu, c.binaries.criuWorkload] where access(path, X_OK) != 0 {
            throw BenchError("missing executable \(path) (--criu, and lp-criu-workload next to lazy-pagesd)")
        }
        if workload == "remote" { try ensurePipeMaxSize() }
        guard ProcessDescriptor.becomeSubreaper() else { throw BenchError("PR_SET_CHILD_SUBREAPER: \(String(cString: strerror(errno)))") }
        let restorer = CRIURestorer(
            criu: c.criu, daemon: c.binaries.daemon, pageServer: c.binaries.pageServer, tunables: c.tunables,
            timeout: c.timeout)
        do {
            let mode = workload == "remote" ? "idle" : workload
            let bytes = workload == "fork" ? max(c.bytes / 4, 1 << 20) : c.bytes
            progress("criu-\(workload): dumping a \(bytes >> 20) MiB \(mode) process with criu dump")
            let dump = try CRIUDump(
                criu: c.criu, workload: c.binaries.criuWorkload, mode: mode, bytes: bytes,
                directory: scratch + "/criu-\(workload)", timeout: c.timeout)
            defer { dump.remove() }
            var remoteView: String?
            if workload == "remote" {
                remoteView = scratch + "/criu-\(workload)-client"
                try RemoteView.write(from: dump.directory, to: remoteView!)
            }
            defer { if let remoteView { removeTree(remoteView) } }
            var result = CRIUComparison(workload: workload, bytes: bytes, loadAtStart: currentLoad())
            for round in 0..<c.criuRounds {
                let order: [LazyMonitor] = round % 2 == 0 ? [.criu, .ours] : [.ours, .criu]
                for monitor in order {
                    progress("criu-\(workload) round \(round + 1): \(monitor.rawValue)")
                    let work = scratch + "/criu-\(workload)-\(round)-\(monitor.rawValue)"
                    defer { removeTree(work) }
                    let run = try restorer.restore(
                        dump, monitor: monitor, work: work, remoteView: remoteView, wakeAtOnce: mode != "idle")
                    if monitor == .criu { result.criu.append(run) } else { result.ours.append(run) }
                }
            }
            result.loadAtEnd = currentLoad()
            return result
        }
    }
}

/// CRIU's page server splices whole 4 MiB page pipes: it fails ("splice: Bad file descriptor") when
/// `fs.pipe-max-size` is below 4194304. Raised if lower (and left so: other users of the machine need it too).
private func ensurePipeMaxSize() throws {
    let path = "/proc/sys/fs/pipe-max-size"
    let current = Int(readText(path).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    guard current < 4_194_304 else { return }
    guard (try? "4194304\n".write(toFile: path, atomically: false, encoding: .utf8)) != nil else {
        throw BenchError("fs.pipe-max-size is \(current); CRIU's page server needs 4194304 (sysctl -w fs.pipe-max-size=4194304)")
    }
}
