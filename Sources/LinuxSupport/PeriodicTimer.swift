import CLinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A timer descriptor (`timerfd`, `CLOCK_MONOTONIC`, non-blocking, close-on-exec) that becomes readable every
/// `interval` seconds, for an epoll loop.
public final class PeriodicTimer: @unchecked Sendable {
    public let descriptor: Int32

    public init(interval: Double) throws(SystemCallError) {
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard fd >= 0 else { throw SystemCallError("timerfd_create") }
        descriptor = fd
        let period = timespec(tv_sec: Int(interval), tv_nsec: Int((interval - Double(Int(interval))) * 1e9))
        var spec = itimerspec(it_interval: period, it_value: period)
        guard timerfd_settime(fd, 0, &spec, nil) == 0 else {
            let error = SystemCallError("timerfd_settime")
            close(fd)
            throw error
        }
    }

    deinit { close(descriptor) }

    /// Reads (and so clears) the expirations since the last call; 0 when none.
    @discardableResult
    public func acknowledge() -> UInt64 {
        var expirations: UInt64 = 0
        return read(descriptor, &expirations, 8) == 8 ? expirations : 0
    }
}
