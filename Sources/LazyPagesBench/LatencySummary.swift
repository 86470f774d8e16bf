/// Percentiles of a set of fault latencies (microseconds).
public struct LatencySummary: Sendable, Codable {
    public var count: Int
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var max: Double
    public var mean: Double

    /// From latencies in nanoseconds (nearest-rank percentiles).
    public init(nanoseconds: [UInt64]) {
        let sorted = nanoseconds.sorted()
        count = sorted.count
        func rank(_ q: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            let i = Swift.min(sorted.count - 1, Swift.max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))
            return Double(sorted[i]) / 1000
        }
        p50 = rank(0.50)
        p90 = rank(0.90)
        p99 = rank(0.99)
        max = Double(sorted.last ?? 0) / 1000
        mean = sorted.isEmpty ? 0 : Double(sorted.reduce(0, +)) / Double(sorted.count) / 1000
    }
}

/// One latency (ns) per line, as the C programs write them.
func readLatencies(_ path: String) -> [UInt64] {
    readText(path).split(separator: "\n").compactMap { UInt64($0) }
}
