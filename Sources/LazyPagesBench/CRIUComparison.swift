import LinuxSupport
import CRIUImages
import Foundation

/// One workload of the CRIU comparison (scenario `criu`): the same real dump restored lazily by `criu lazy-pages`
/// and by lazy-pagesd, alternating, `rounds` times each.
public struct CRIUComparison: Sendable, Codable {
    /// `idle`, `fork`, `random`, `remote` (the idle workload, pages from a page server over loopback) or
    /// `remote-tls` (the same with TLS on both page-server pairs).
    public var workload: String
    public var bytes: Int
    public var criu: [CRIURestoreResult] = []
    public var ours: [CRIURestoreResult] = []
    /// lazy-pagesd with `variantArguments` added (`--criu-variant`), when asked for.
    public var variantArguments: [String]?
    public var variant: [CRIURestoreResult] = []
    /// /proc/loadavg before the first and after the last restore.
    public var loadAtStart: String
    public var loadAtEnd: String = ""

    public var criuMedian: Double { median(criu.map(\.seconds)) }
    public var oursMedian: Double { median(ours.map(\.seconds)) }
    /// CRIU's median time over ours: how many times faster lazy-pagesd is.
    public var speedup: Double { oursMedian > 0 ? criuMedian / oursMedian : .nan }
    public var variantMedian: Double { median(variant.map(\.seconds)) }
    public var variantSpeedup: Double { variantMedian > 0 ? criuMedian / variantMedian : .nan }
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The workloads of the CRIU comparison, in the order they run.
public let criuWorkloads = ["idle", "fork", "random", "remote", "remote-tls"]

extension BenchSuite {
    /// Dumps `workload` once with the real CRIU and restores it `criuRounds` times with each daemon, alternating
    /// which goes first. Sizes: the image size for idle, random and remote; a quarter of it for fork.
    func criuComparison(_ workload: String, scratch: String) throws -> CRIUComparison {
        let c = configuration
        for path in [c.criu, c.binaries.criuWorkload] where access(path, X_OK) != 0 {
            throw BenchError("missing executable \(path) (--criu, and lp-criu-workload next to lazy-pagesd)")
        }
        let remote = workload.hasPrefix("remote")
        if remote { try ensurePipeMaxSize() }
        guard ProcessDescriptor.becomeSubreaper() else { throw BenchError("PR_SET_CHILD_SUBREAPER: \(SystemCallError.reason(errno))") }
        let restorer = CRIURestorer(
            criu: c.criu, daemon: c.binaries.daemon, pageServer: c.binaries.pageServer, tunables: c.tunables,
            timeout: c.timeout)
        do {
            let mode = remote ? "idle" : workload
            let bytes = workload == "fork" ? max(c.bytes / 4, 1 << 20) : c.bytes
            progress("criu-\(workload): dumping a \(bytes >> 20) MiB \(mode) process with criu dump")
            let dump = try CRIUDump(
                criu: c.criu, workload: c.binaries.criuWorkload, mode: mode, bytes: bytes,
                directory: scratch + "/criu-\(workload)", timeout: c.timeout)
            defer { dump.remove() }
            var remoteView: String?
            if remote {
                remoteView = scratch + "/criu-\(workload)-client"
                try RemoteView.write(from: dump.directory, to: remoteView!)
            }
            defer { if let remoteView { removeTree(remoteView) } }
            let certificates = workload == "remote-tls"
                ? try BenchCertificates(directory: scratch + "/criu-\(workload)-certificates") : nil
            defer { if let certificates { removeTree(certificates.directory) } }
            var result = CRIUComparison(workload: workload, bytes: bytes, loadAtStart: currentLoad())
            result.variantArguments = c.criuVariantArguments
            // (monitor, extra daemon flags, name); each round starts one later in this list.
            var monitors: [(LazyMonitor, [String]?, String)] = [(.criu, nil, "criu"), (.ours, nil, "lazy-pagesd")]
            if let variant = c.criuVariantArguments { monitors.append((.ours, variant, "lazy-pagesd-variant")) }
            for round in 0..<c.criuRounds {
                for k in 0..<monitors.count {
                    let (monitor, variant, name) = monitors[(round + k) % monitors.count]
                    progress("criu-\(workload) round \(round + 1): \(name)")
                    let work = scratch + "/criu-\(workload)-\(round)-\(name)"
                    defer { removeTree(work) }
                    let run = try restorer.restore(
                        dump, monitor: monitor, work: work, remoteView: remoteView, certificates: certificates,
                        wakeAtOnce: mode != "idle", extraDaemonArguments: variant ?? [])
                    if monitor == .criu {
                        result.criu.append(run)
                    } else if variant == nil {
                        result.ours.append(run)
                    } else {
                        result.variant.append(run)
                    }
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
