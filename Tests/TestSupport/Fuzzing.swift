import Foundation

/// The knobs every fuzzer shares, from the environment: `LP_FUZZ_SECONDS` (time bound), `LP_FUZZ_INPUTS` (count
/// bound) and `LP_FUZZ_SEED` (reproduce a run). A fuzzer stops at whichever bound comes first.
public struct FuzzBudget: Sendable {
    public let seconds: Double
    public let inputs: Int
    public let seed: UInt64
    private let start = ContinuousClock.now

    public init(seconds: Double, inputs: Int, seed: UInt64 = 20261125) {
        let environment = ProcessInfo.processInfo.environment
        self.seconds = Double(environment["LP_FUZZ_SECONDS"] ?? "") ?? seconds
        self.inputs = Int(environment["LP_FUZZ_INPUTS"] ?? "") ?? inputs
        self.seed = UInt64(environment["LP_FUZZ_SEED"] ?? "") ?? seed
    }

    /// True while fewer than `inputs` were tried and the time is not up.
    public func allows(_ tried: Int) -> Bool {
        tried < inputs && ContinuousClock.now - start < .seconds(seconds)
    }
}

/// xorshift64*: reproducible choices for fuzzers.
public struct FuzzRandom {
    var state: UInt64
    public init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }

    public mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    /// A number in `0..<bound` (bound > 0).
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(max(bound, 1))) }

    /// True with probability `1 / n`.
    public mutating func oneIn(_ n: Int) -> Bool { below(n) == 0 }

    public mutating func pick<T>(_ choices: [T]) -> T { choices[below(choices.count)] }

    public mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }

    /// `array` in a seeded random order (Fisher–Yates).
    public mutating func shuffled<T>(_ array: [T]) -> [T] {
        var out = array
        for i in out.indices.reversed() where i > 0 { out.swapAt(i, below(i + 1)) }
        return out
    }
}

/// Byte-level mutations shared by the fuzzers: bit flips, boundary bytes, truncation, insertion, deletion,
/// duplication, 32/64-bit boundary words. Returns the mutated bytes and what was done.
public enum ByteMutator {
    public static func mutate(_ bytes: [UInt8], _ rng: inout FuzzRandom) -> ([UInt8], String) {
        var out = bytes
        let at = rng.below(max(out.count, 1))
        switch rng.below(8) {
        case 0:
            let bit = UInt8(1) << UInt8(rng.below(8))
            if !out.isEmpty { out[at] ^= bit }
            return (out, "flip bit \(bit) at \(at)")
        case 1:
            let value = rng.pick([0, 0xff, 0x7f, 0x80, 1, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x0a, 0x2d] as [UInt8])
            if !out.isEmpty { out[at] = value }
            return (out, "byte \(value) at \(at)")
        case 2:
            return (Array(out.prefix(at)), "truncate to \(at)")
        case 3:
            let n = 1 + rng.below(16)
            out.insert(contentsOf: rng.bytes(n), at: min(at, out.count))
            return (out, "insert \(n) random bytes at \(at)")
        case 4:
            let n = min(1 + rng.below(16), out.count - min(at, out.count))
            out.removeSubrange(min(at, out.count)..<min(at, out.count) + n)
            return (out, "delete \(n) bytes at \(at)")
        case 5:
            let word = rng.pick([0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 4096, 0x1000_0000] as [UInt32])
            for i in 0..<4 where at + i < out.count { out[at + i] = UInt8(truncatingIfNeeded: word >> (8 * i)) }
            return (out, "word \(word) at \(at)")
        case 6:
            let word = rng.pick([0, UInt64.max, 1 << 63, 1 << 32, 0x7fff_ffff_ffff_f000] as [UInt64])
            for i in 0..<8 where at + i < out.count { out[at + i] = UInt8(truncatingIfNeeded: word >> (8 * i)) }
            return (out, "u64 \(word) at \(at)")
        default:
            let n = min(1 + rng.below(64), out.count - min(at, out.count))
            let chunk = Array(out[min(at, out.count)..<min(at, out.count) + n])
            out.insert(contentsOf: chunk, at: min(at, out.count))
            return (out, "duplicate \(n) bytes at \(at)")
        }
    }
}

/// Seconds in a `Duration`.
public func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}
