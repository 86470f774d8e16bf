import ArgumentParser
import Foundation
import LazyPagesBench

/// `lazy-pages bench`: lazy-pagesd against the C ceiling and floor, side by side on the same image.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark lazy-pagesd against a C UFFDIO_COPY ceiling and a minimal-handler fault floor.",
        discussion: """
            Writes a CRIU image (--size) to a scratch directory, runs the baselines (lp-bench-baseline) and the \
            scenarios (a) demand faults, (b) background fill, (c) a working process during the fill, (d) a forking \
            workload, (e) remote pages over loopback from `lazy-pages page-server` (demand faults, fill), \
            (f) concurrent restores, each through the real lazy-pages.socket protocol with lazy-pagesd, \
            lp-bench-workload and lp-workload found next to this executable; then (criu) real `criu dump`s of \
            lp-criu-workload (idle, fork, random, and idle over a loopback page server, plain and TLS) restored by \
            `criu restore --lazy-pages` with `criu lazy-pages` and with lazy-pagesd, alternating (--criu); prints a \
            table (or --json) with ratios against the baselines and CRIU, and removes the scratch files. Use a release build for real numbers \
            (Scripts/bench does).
            """)

    @Option(help: "Image size for the main scenarios (bytes, or with K/M/G).", transform: parseSize)
    var size: Int = 1 << 30

    @Flag(help: "Fewer touches, one ceiling pass, small concurrent restores (a smoke run).")
    var quick = false

    @Flag(help: "Print the report as JSON (sorted keys) instead of a table.")
    var json = false

    @Option(help: "Random first touches timed for the floor and scenario (a) (default 20000; --quick 2000).")
    var touches: Int?

    @Option(help: "Passes per ceiling chunk size (default 3; --quick 1).")
    var repeats: Int?

    @Option(help: "Run only these steps, comma-separated: ceiling, floor, a, b, c, d, e, f, criu (default: all).")
    var only: String = ""

    @Option(help: "Interleaved rounds of the floor and scenario (a), pooled (default 3; --quick 1).")
    var rounds: Int?

    @Option(help: "Concurrent restores in scenario (f).")
    var concurrent: Int = 16

    @Option(help: "Size of each concurrent restore (default 64M; --quick 1M).", transform: parseSize)
    var concurrentSize: Int?

    @Option(help: "Passed to every lazy-pagesd (default: the daemon's).")
    var faultAround: Int?

    @Option(help: "Passed to every lazy-pagesd (default: the daemon's).")
    var fillChunk: Int?

    @Option(help: "Passed to every lazy-pagesd (default: the daemon's).")
    var fillChunkMax: Int?

    @Option(help: "Passed to every lazy-pagesd (default: the daemon's).")
    var spinAfterFault: Int?

    @Option(help: "Seed of the page pattern and of the random touches.")
    var seed: UInt64 = 1

    @Option(help: "Keep the latency files (ns, one per line) here, for plotting.")
    var latencyDir: String?

    @Option(help: "Seconds after which a stuck restore is killed.")
    var timeout: Int = 300

    @Option(help: "The reference CRIU for the `criu` step.")
    var criu = "/var/tmp/lazy-pages-criu-4.2/criu-4.2/criu/criu"

    @Option(help: "Workloads of the `criu` step, comma-separated: idle, fork, random, remote, remote-tls (default: all).")
    var criuWorkloads: String?

    @Option(help: "Alternating rounds per daemon in the `criu` step (default 3; --quick 1).")
    var criuRounds: Int?

    @Option(help: ArgumentHelp(
        "A second lazy-pagesd in the `criu` step with these flags added, space-separated, interleaved with the others.",
        valueName: "flags"))
    var criuVariant: String?

    var criuWorkloadList: [String] { criuWorkloads.map { $0.split(separator: ",").map(String.init) } ?? LazyPagesBench.criuWorkloads }

    @Option(help: "Where lazy-pagesd, lp-bench-baseline, lp-bench-workload and lp-workload are (default: next to this executable).")
    var binDir: String?

    func validate() throws {
        guard size >= 1 << 20, size % 4096 == 0 else { throw ValidationError("--size must be at least 1M and a multiple of 4K") }
        if let touches, touches < 1 { throw ValidationError("--touches must be positive") }
        let known: Set<Substring> = ["ceiling", "floor", "a", "b", "c", "d", "e", "f", "criu"]
        for step in only.split(separator: ",") where !known.contains(step) {
            throw ValidationError("unknown step '\(step)' in --only; known: ceiling, floor, a, b, c, d, e, f, criu")
        }
        for workload in criuWorkloadList where !LazyPagesBench.criuWorkloads.contains(workload) {
            throw ValidationError("unknown workload '\(workload)' in --criu-workloads; known: \(LazyPagesBench.criuWorkloads.joined(separator: ", "))")
        }
        if let criuRounds, criuRounds < 1 { throw ValidationError("--criu-rounds must be positive") }
        if let rounds, rounds < 1 { throw ValidationError("--rounds must be positive") }
        if let repeats, repeats < 1 { throw ValidationError("--repeats must be positive") }
        guard concurrent >= 1 else { throw ValidationError("--concurrent must be positive") }
        if let concurrentSize, concurrentSize < 4096 || concurrentSize % 4096 != 0 {
            throw ValidationError("--concurrent-size must be a multiple of 4K")
        }
        if let faultAround, faultAround < 1 { throw ValidationError("--fault-around must be at least 1") }
        if let fillChunk, fillChunk < 1 { throw ValidationError("--fill-chunk must be at least 1") }
    }

    func run() throws {
        let directory = binDir ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().path
        let pages = size / 4096
        var configuration = BenchConfiguration(
            bytes: size, touches: min(touches ?? (quick ? 2000 : 20000), pages),
            ceilingRepeats: repeats ?? (quick ? 1 : 3), concurrentRestores: concurrent,
            concurrentBytes: concurrentSize ?? (quick ? 1 << 20 : 64 << 20),
            tunables: {
                var tunables = DaemonTunables(faultAround: faultAround, fillChunk: fillChunk)
                tunables.fillChunkMax = fillChunkMax
                tunables.spinAfterFault = spinAfterFault
                return tunables
            }(),
            seed: seed, latencyDirectory: latencyDir, timeout: Double(timeout),
            binaries: .init(directory: ProcessInfo.processInfo.environment["LP_BENCH_BIN_DIR"] ?? directory))
        configuration.latencyRounds = rounds ?? (quick ? 1 : 3)
        configuration.scenarios = Set(only.split(separator: ",").map { String($0) })
        configuration.criu = criu
        configuration.criuWorkloadNames = criuWorkloadList
        configuration.criuRounds = criuRounds ?? (quick ? 1 : 3)
        configuration.criuVariantArguments = criuVariant.map { $0.split(separator: " ").map(String.init) }
        let suite = BenchSuite(configuration: configuration) { step in
            FileHandle.standardError.write(Data("bench: \(step)\n".utf8))
        }
        let report = try suite.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            var object = try JSONSerialization.jsonObject(with: encoder.encode(report)) as? [String: Any] ?? [:]
            object["targets"] = try JSONSerialization.jsonObject(with: encoder.encode(report.targets))
            object["ceilingGiBps"] = report.ceilingGiBps
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(report.table, terminator: "")
        }
        if !report.failures.isEmpty { throw ExitCode.failure }
    }
}

/// "1G", "16M", "64K" or plain bytes.
func parseSize(_ text: String) throws -> Int {
    guard let size = ByteCount(argument: text), size.bytes <= UInt64(Int.max) else {
        throw ValidationError("cannot read size '\(text)' (try 1G, 64M, 4096)")
    }
    return Int(size.bytes)
}
