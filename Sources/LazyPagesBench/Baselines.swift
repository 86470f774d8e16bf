import Foundation

/// The fill ceiling of one chunk size: passes of a plain `UFFDIO_COPY` loop over the whole pages file.
public struct CeilingResult: Sendable, Codable {
    public var chunkBytes: Int
    /// Threads copying at once, each over its own slice.
    public var threads: Int = 1
    /// GiB/s of every pass.
    public var passes: [Double]
    public var best: Double { passes.max() ?? 0 }
    public var median: Double {
        let s = passes.sorted()
        return s.isEmpty ? 0 : s[s.count / 2]
    }
}

/// The fault floor: a minimal C handler serving random first touches.
public struct FloorResult: Sendable, Codable {
    public var latency: LatencySummary
}

/// Runs `lp-bench-baseline`.
struct Baselines {
    let binary: String
    let scratch: String

    func ceiling(pagesFile: String, chunkKiB: Int, repeats: Int, threads: Int = 1) throws -> CeilingResult {
        let out = try run(
            ["ceiling", pagesFile, String(chunkKiB), String(repeats), String(threads)], name: "ceiling-\(chunkKiB)-\(threads)")
        var passes: [Double] = []
        for line in out.split(separator: "\n") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let rate = object["gib_per_s"] as? Double
            else { continue }
            passes.append(rate)
        }
        guard !passes.isEmpty else { throw BenchError("lp-bench-baseline ceiling printed no result: \(out)") }
        return CeilingResult(chunkBytes: chunkKiB * 1024, threads: threads, passes: passes)
    }

    /// With `spin`, the handler reads its uffd in a loop instead of sleeping in poll.
    func floor(pagesFile: String, touches: Int, seed: UInt64, latencyFile: String, spin: Bool = false) throws -> FloorResult {
        _ = try run(
            ["floor", pagesFile, String(touches), String(seed), latencyFile] + (spin ? ["spin"] : []),
            name: spin ? "floor-spin" : "floor")
        let latencies = readLatencies(latencyFile)
        guard !latencies.isEmpty else { throw BenchError("lp-bench-baseline floor wrote no latencies") }
        return FloorResult(latency: LatencySummary(nanoseconds: latencies))
    }

    private func run(_ arguments: [String], name: String) throws -> String {
        let child = try ChildProcess(
            path: binary, arguments: arguments, stdoutPath: scratch + "/\(name).out",
            stderrPath: scratch + "/\(name).err")
        let usage = try child.waitForExit()
        guard usage.status == 0 else {
            throw BenchError("lp-bench-baseline \(arguments.joined(separator: " ")) exited \(usage.status): \(child.errors())")
        }
        return child.output()
    }
}
