#if canImport(Glibc)
import Glibc
#endif

/// The process's descriptor limit (`RLIMIT_NOFILE`): one restore holds a uffd per task and per forked child, so
/// a restore of thousands of tasks needs thousands of descriptors.
public enum DescriptorLimit {
    /// The current soft and hard limits.
    public static var current: (soft: Int, hard: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (1024, 1024) }
        return (clamp(limit.rlim_cur), clamp(limit.rlim_max))
    }

    /// Raises the soft limit to the hard limit (nothing here uses `select`, so a large limit is harmless), and,
    /// when `wanted` is above the hard limit and the process may (root, `CAP_SYS_RESOURCE`), the hard limit to
    /// `wanted` (capped by `fs.nr_open`). Returns the soft limit in force afterwards.
    @discardableResult
    public static func raise(wanted: Int = 0) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return current.soft }
        if wanted > clamp(limit.rlim_max) {
            var higher = limit
            higher.rlim_max = rlim_t(min(wanted, systemMaximum))
            higher.rlim_cur = higher.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &higher) == 0 { return current.soft }
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return current.soft
    }

    /// Whether more than `reserve` descriptors are free: the lowest free descriptor number is below
    /// `soft limit - reserve` (descriptors are handed out lowest first, so every number below it is in use).
    /// `probe` is any open descriptor.
    public static func hasRoom(reserve: Int, probe: Int32) -> Bool {
        let lowest = fcntl(probe, F_DUPFD_CLOEXEC, 0)
        guard lowest >= 0 else { return false }
        close(lowest)
        return Int(lowest) < current.soft - reserve
    }

    /// `fs.nr_open`: no hard limit may exceed it.
    private static var systemMaximum: Int {
        let fd = open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 1 << 20 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return 1 << 20 }
        return Int(String(decoding: buffer[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)) ?? 1 << 20
    }

    private static func clamp(_ value: rlim_t) -> Int { value > rlim_t(Int.max) ? Int.max : Int(value) }
}
