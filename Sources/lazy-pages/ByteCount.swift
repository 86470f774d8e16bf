import ArgumentParser
import Foundation

/// A size on the command line: `4096`, `64K`, `256M`, `1G` (powers of 1024; an optional trailing `B` or `iB`).
struct ByteCount: ExpressibleByArgument, CustomStringConvertible, Sendable {
    var bytes: UInt64

    init(bytes: UInt64) { self.bytes = bytes }

    init?(argument: String) {
        var text = argument.uppercased()
        for suffix in ["IB", "B"] where text.hasSuffix(suffix) && text.count > suffix.count {
            text.removeLast(suffix.count)
            break
        }
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var multiplier: UInt64 = 1
        if let last = text.last, let unit = units[last] {
            multiplier = unit
            text.removeLast()
        }
        guard let value = UInt64(text), value > 0 else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        bytes = product
    }

    var description: String {
        for (unit, size) in [("T", UInt64(1) << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes % size == 0 {
            return "\(bytes / size)\(unit)"
        }
        return "\(bytes)"
    }

    /// `bytes` to one decimal in the largest unit that fits ("23.4G", "512.0M", "900"), for messages.
    static func approximate(_ bytes: UInt64) -> String {
        for (unit, size) in [("T", UInt64(1) << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes >= size {
            return String(format: "%.1f%@", Double(bytes) / Double(size), unit)
        }
        return "\(bytes)"
    }
}
