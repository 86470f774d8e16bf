import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a demo of a given size needs before it writes anything: disk for the image set (the pages file holds every
/// dumped page) and memory for the restored tasks (each ends with every page of its image resident).
enum DemoResources {
    /// Room kept aside on both counts, beyond the image set itself.
    static let margin: UInt64 = 64 << 20

    struct Shortage: Error, CustomStringConvertible {
        let description: String
    }

    /// Throws a `Shortage` naming what is short when `bytes` of images in `directory` and `bytes` of restored memory
    /// would not fit (free blocks of that filesystem; `MemAvailable` of /proc/meminfo).
    static func check(bytes: UInt64, directory: String) throws {
        var problems: [String] = []
        if let free = freeDisk(directory), free < bytes + margin {
            problems.append("\(ByteCount.approximate(bytes + margin)) of disk in \(directory) (\(ByteCount.approximate(free)) free)")
        }
        if let available = availableMemory(), available < bytes + margin {
            problems.append("\(ByteCount.approximate(bytes + margin)) of memory for the restored tasks "
                + "(\(ByteCount.approximate(available)) available)")
        }
        guard problems.isEmpty else {
            throw Shortage(description: "a \(ByteCount(bytes: bytes)) demo needs "
                + problems.joined(separator: " and ") + "; choose a smaller --size")
        }
    }

    /// Bytes an unprivileged writer may still use on the filesystem of `path`.
    static func freeDisk(_ path: String) -> UInt64? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        return UInt64(info.f_bavail) * UInt64(info.f_frsize)
    }

    /// `MemAvailable` in bytes.
    static func availableMemory() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kib = UInt64(fields[1]) else { return nil }
            return kib * 1024
        }
        return nil
    }
}
