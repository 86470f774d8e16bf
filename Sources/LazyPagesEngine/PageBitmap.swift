/// One bit per page: set = still to deliver. Copy-on-write (an `Array` underneath), so a forked child's copy of
/// its parent's state costs nothing until one side changes.
public struct PageBitmap: Sendable, Hashable {
    @usableFromInline var words: [UInt64]
    public private(set) var count: Int
    /// Number of set bits.
    public private(set) var setCount: Int

    /// A bitmap of `count` pages, all set (`filled`) or all clear.
    public init(count: Int, filled: Bool) {
        self.count = count
        let wordCount = (count + 63) / 64
        if filled {
            words = [UInt64](repeating: ~0, count: wordCount)
            if count % 64 != 0 { words[wordCount - 1] = (1 << UInt64(count % 64)) - 1 }
            setCount = count
        } else {
            words = [UInt64](repeating: 0, count: wordCount)
            setCount = 0
        }
    }

    @inlinable
    public func isSet(_ index: Int) -> Bool {
        words[index >> 6] & (1 << UInt64(index & 63)) != 0
    }

    /// Clears `[start, start + length)`; returns how many bits were set there.
    @discardableResult
    public mutating func clear(_ start: Int, _ length: Int) -> Int {
        precondition(start >= 0 && length >= 0 && start + length <= count)
        var cleared = 0
        var i = start
        let end = start + length
        while i < end {
            let w = i >> 6
            let bit = i & 63
            let n = min(64 - bit, end - i)
            let mask: UInt64 = n == 64 ? ~0 : ((1 << UInt64(n)) - 1) << UInt64(bit)
            cleared += (words[w] & mask).nonzeroBitCount
            words[w] &= ~mask
            i += n
        }
        setCount -= cleared
        return cleared
    }

    /// The first set bit at or after `from`, or nil.
    @inlinable
    public func nextSet(from: Int) -> Int? {
        guard from < count else { return nil }
        var w = from >> 6
        var word = words[w] & (~0 << UInt64(from & 63))
        while true {
            if word != 0 {
                let index = (w << 6) + word.trailingZeroBitCount
                return index < count ? index : nil
            }
            w += 1
            if w >= words.count { return nil }
            word = words[w]
        }
    }

    /// Length of the run of set bits starting at `from` (which must be set), at most `limit`.
    @inlinable
    public func runLength(from: Int, limit: Int) -> Int {
        // `limit` may be Int.max ("the whole run"): never add it to `from`.
        let end = limit >= count - from ? count : from + limit
        var i = from
        while i < end {
            let w = i >> 6
            let bit = i & 63
            let ones = (~(words[w] >> UInt64(bit))).trailingZeroBitCount  // set bits from `bit` upward
            let available = min(64 - bit, ones)
            i += available
            if available < 64 - bit { break }
        }
        return min(i, end) - from
    }

    /// The bits `[start, start + length)` as a new bitmap.
    public func slice(_ start: Int, _ length: Int) -> PageBitmap {
        precondition(start >= 0 && length >= 0 && start + length <= count)
        if start == 0 && length == count { return self }
        var result = PageBitmap(count: length, filled: false)
        var i = 0  // always a multiple of 64: whole destination words
        while i < length {
            let src = start + i
            let n = min(64, length - i)
            var bits = words[src >> 6] >> UInt64(src & 63)
            if src & 63 != 0 && (src >> 6) + 1 < words.count {
                bits |= words[(src >> 6) + 1] << UInt64(64 - (src & 63))
            }
            if n < 64 { bits &= (1 << UInt64(n)) - 1 }
            result.words[i >> 6] = bits
            result.setCount += bits.nonzeroBitCount
            i += n
        }
        return result
    }
}
