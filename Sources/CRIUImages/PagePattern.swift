import LinuxSupport

/// The deterministic page contents used by the fixture, tests, benchmarks and the demo:
/// word `w` (little-endian `u64`) of page `p` is `((p + 1) &* 0x9E3779B97F4A7C15 ^ seed) &+ w &* 0x100000001B3`.
public enum PagePattern {
    /// Word `word` of page `pageIndex` under `seed`.
    @inlinable
    public static func word(seed: UInt64, pageIndex: UInt64, word: UInt64) -> UInt64 {
        (((pageIndex &+ 1) &* 0x9E37_79B9_7F4A_7C15) ^ seed) &+ (word &* 0x100_0000_01B3)
    }

    /// Fills `into` (normally one 4 KiB page) with page `pageIndex` of the pattern; a trailing partial word
    /// is left untouched.
    @inlinable
    public static func fill(seed: UInt64, pageIndex: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        let base = ((pageIndex &+ 1) &* 0x9E37_79B9_7F4A_7C15) ^ seed
        for w in 0 ..< buffer.count / 8 {
            buffer.storeBytes(of: (base &+ UInt64(w) &* 0x100_0000_01B3).littleEndian, toByteOffset: w * 8, as: UInt64.self)
        }
    }

    /// Whether `bytes` (one page) hold page `pageIndex` of the pattern.
    public static func matches(seed: UInt64, pageIndex: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let base = ((pageIndex &+ 1) &* 0x9E37_79B9_7F4A_7C15) ^ seed
        for w in 0 ..< bytes.count / 8 {
            let value = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self))
            if value != base &+ UInt64(w) &* 0x100_0000_01B3 { return false }
        }
        return true
    }

    /// A ``RunSpec`` fill function writing the pattern with page index `(pageAddress - base) / basePageSize`,
    /// i.e. page 0 of the pattern at `base` (typically the start of the region).
    public static func filler(seed: UInt64, base: UInt64)
        -> @Sendable (_ pageAddress: UInt64, _ page: UnsafeMutableRawBufferPointer) -> Void
    {
        { address, page in fill(seed: seed, pageIndex: (address &- base) / UInt64(basePageSize), into: page) }
    }
}
