import CLinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// An owning epoll instance. Each registered descriptor carries a 64-bit tag chosen by the caller.
public final class Epoll {
    /// The event masks callers ask for (`EPOLLIN`, `EPOLLOUT`), so that no module but this one needs the C header.
    public static let readable = EPOLLIN.rawValue
    public static let writable = EPOLLOUT.rawValue

    public let descriptor: Int32
    private var events: UnsafeMutablePointer<epoll_event>
    private let capacity: Int

    public init(capacity: Int = 64) throws {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw SystemCallError("epoll_create1") }
        descriptor = fd
        self.capacity = capacity
        events = .allocate(capacity: capacity)
    }

    deinit {
        events.deallocate()
        close(descriptor)
    }

    public func add(_ fd: Int32, tag: UInt64, events mask: UInt32 = EPOLLIN.rawValue) throws {
        var event = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(descriptor, EPOLL_CTL_ADD, fd, &event) == 0 else { throw SystemCallError("epoll_ctl(ADD)") }
    }

    /// Changes the events watched for `fd` (already added), keeping or replacing its tag.
    public func modify(_ fd: Int32, tag: UInt64, events mask: UInt32) throws {
        var event = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(descriptor, EPOLL_CTL_MOD, fd, &event) == 0 else { throw SystemCallError("epoll_ctl(MOD)") }
    }

    public func remove(_ fd: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, fd, &event)
    }

    /// Waits up to `timeout` ms (-1: forever, 0: poll) and calls `body(tag, events)` for each ready descriptor.
    /// Returns how many were ready.
    @discardableResult
    public func wait(timeout: Int32, _ body: (UInt64, UInt32) -> Void) -> Int {
        let n = epoll_wait(descriptor, events, Int32(capacity), timeout)
        guard n > 0 else { return 0 }
        for i in 0..<Int(n) { body(events[i].data.u64, events[i].events) }
        return Int(n)
    }
}

/// An `eventfd` used to wake a loop blocked in `epoll_wait` from another thread.
public final class WakeUpEvent: @unchecked Sendable {
    public let descriptor: Int32
    public init() throws {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError("eventfd") }
        descriptor = fd
    }
    deinit { close(descriptor) }
    public func signal() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }
    public func reset() {
        var value: UInt64 = 0
        _ = read(descriptor, &value, 8)
    }
}
