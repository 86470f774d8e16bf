import Foundation
import LinuxSupport

/// Reads `count` bytes from socket `fd`; fewer only at end of file or on an error.
public func readExactly(_ fd: Int32, _ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var have = 0
    while have < count {
        let n = out.withUnsafeMutableBytes { raw in
            retryingOnInterrupt { recv(fd, raw.baseAddress! + have, count - have, 0) }
        }
        if n <= 0 { break }
        have += n
    }
    return Array(out[0..<have])
}
