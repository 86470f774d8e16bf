import CUserfaultfd
import LinuxSupport
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A page-aligned span of the monitored process's address space.
public struct AddressRange: Sendable, Hashable, CustomStringConvertible {
    public var start: UInt64
    public var length: UInt64
    public init(start: UInt64, length: UInt64) {
        self.start = start
        self.length = length
    }
    public init(start: UInt64, end: UInt64) {
        precondition(end >= start)
        self.init(start: start, length: end - start)
    }
    public var end: UInt64 { start + length }
    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
    public var description: String { "[0x\(String(start, radix: 16)), 0x\(String(end, radix: 16)))" }
}

/// Which way a uffd was obtained.
public enum OpenPath: String, Sendable {
    case device = "/dev/userfaultfd"
    case syscall = "userfaultfd(2)"
}

/// What `UFFDIO_API` reported, and what was asked for.
public struct APIInfo: Sendable, Hashable {
    /// Every feature the kernel offers. The kernel reports the full set whatever was asked for, so this is *not*
    /// what is enabled on the descriptor; see `enabled`.
    public var features: Features
    /// The features requested and accepted by this `UFFDIO_API` call: the ones in force on the descriptor.
    public var enabled: Features
    /// Ioctls available on the descriptor (`register`, `unregister`, `api`; range ioctls come from `register`).
    public var ioctls: Ioctls

    public init(features: Features, enabled: Features, ioctls: Ioctls) {
        self.features = features
        self.enabled = enabled
        self.ioctls = ioctls
    }
}

/// An owning handle to a userfaultfd. The descriptor is closed when the handle is closed or deinitialized.
///
/// Range ioctls are safe to issue from several threads at once (the kernel serializes what it must); `close()`
/// must only be called by the owner when no other thread uses the handle.
public final class Userfaultfd: @unchecked Sendable {
    /// The descriptor, or -1 once closed.
    public private(set) var descriptor: Int32
    /// How this uffd was created; `nil` for an adopted descriptor.
    public let openPath: OpenPath?
    /// The outcome of `UFFDIO_API` when it ran through this handle; `nil` for an adopted descriptor.
    public private(set) var api: APIInfo?

    /// Takes ownership of an existing uffd on which `UFFDIO_API` already ran (one received over `SCM_RIGHTS`, or the
    /// child descriptor of a fork event). `UFFDIO_API` is not called again.
    public init(adopting descriptor: Int32) {
        self.descriptor = descriptor
        self.openPath = nil
        self.api = nil
    }

    private init(descriptor: Int32, openPath: OpenPath) {
        self.descriptor = descriptor
        self.openPath = openPath
    }

    deinit { close() }

    /// Closes the descriptor. The kernel then unregisters every range and wakes every waiting thread.
    public func close() {
        if descriptor >= 0 {
            _ = Glibc.close(descriptor)
            descriptor = -1
        }
    }

    /// Gives up ownership without closing; returns the descriptor.
    public func release() -> Int32 {
        let fd = descriptor
        descriptor = -1
        return fd
    }

    // MARK: Opening

    /// Creates a uffd without negotiating: `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW` first, then the system call.
    public static func create(flags: OpenFlags = [.closeOnExec, .nonBlocking]) throws(UserfaultfdError) -> Userfaultfd {
        let deviceError: Errno
        switch descriptor(via: .device, flags: flags) {
        case .success(let fd): return Userfaultfd(descriptor: fd, openPath: .device)
        case .failure(let e): deviceError = e
        }
        switch descriptor(via: .syscall, flags: flags) {
        case .success(let fd): return Userfaultfd(descriptor: fd, openPath: .syscall)
        case .failure(let e): throw .unavailable(device: deviceError, syscall: e)
        }
    }

    /// Creates a uffd without negotiating, through `path` only (no fallback). Fails with `.systemCall` naming the
    /// path and its errno: the `/dev/userfaultfd` open or `USERFAULTFD_IOC_NEW` error, or the system call's.
    public static func create(via path: OpenPath, flags: OpenFlags = [.closeOnExec, .nonBlocking])
        throws(UserfaultfdError) -> Userfaultfd
    {
        switch descriptor(via: path, flags: flags) {
        case .success(let fd): return Userfaultfd(descriptor: fd, openPath: path)
        case .failure(let e): throw .systemCall(path.rawValue, e)
        }
    }

    /// A new uffd descriptor made through `path`.
    private static func descriptor(via path: OpenPath, flags: OpenFlags) -> Result<Int32, Errno> {
        switch path {
        case .device:
            let dev = valueOrErrno(retryOnInterrupt: true) { Glibc.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC) }
            guard case .success(let devfd) = dev else { return dev }
            defer { _ = Glibc.close(devfd) }
            return valueOrErrno(retryOnInterrupt: true) { CUserfaultfd_ioctl_new(devfd, flags.rawValue) }
        case .syscall:
            return valueOrErrno(retryOnInterrupt: true) { CUserfaultfd_syscall(flags.rawValue) }
        }
    }

    /// Creates a uffd and negotiates exactly `required` plus whatever of `optional` the kernel offers.
    /// Fails naming the missing features or ioctls. `requiredIoctls` is checked against what `UFFDIO_API` reports,
    /// which is only `register`, `unregister` and `api`; range ioctls (`copy`, `zeroPage`, `move`...) are reported
    /// per registration by `register(_:mode:)`.
    public static func open(
        flags: OpenFlags = [.closeOnExec, .nonBlocking],
        required: Features = [],
        optional: Features = [],
        requiredIoctls: Ioctls = []
    ) throws(UserfaultfdError) -> Userfaultfd {
        // UFFDIO_API may run only once per descriptor, so ask a scratch uffd what is offered first.
        let offered = try Userfaultfd.create(flags: flags).negotiate(features: []).features
        let missing = required.subtracting(offered)
        guard missing.isEmpty else { throw .missingFeatures(missing) }
        let uffd = try Userfaultfd.create(flags: flags)
        let info = try uffd.negotiate(features: required.union(optional.intersection(offered)))
        let missingIoctls = requiredIoctls.subtracting(info.ioctls)
        guard missingIoctls.isEmpty else { throw .missingIoctls(missingIoctls) }
        return uffd
    }

    /// Runs `UFFDIO_API` asking for `features`. With `[]` it reports everything the kernel offers.
    /// May be called once per descriptor (the kernel refuses a second call with `EINVAL`).
    @discardableResult
    public func negotiate(features: Features) throws(UserfaultfdError) -> APIInfo {
        var arg = uffdio_api(api: CUserfaultfd_UFFD_API, features: features.rawValue, ioctls: 0)
        if CUserfaultfd_ioctl_api(descriptor, &arg) != 0 { throw .apiFailed(Errno(rawValue: errno)) }
        let info = APIInfo(
            features: Features(rawValue: arg.features), enabled: features, ioctls: Ioctls(rawValue: arg.ioctls))
        api = info
        return info
    }

    // MARK: Registration

    /// Registers `range` and returns the range ioctls available there.
    @discardableResult
    public func register(_ range: AddressRange, mode: RegisterMode = .missing) throws(UserfaultfdError) -> Ioctls {
        var arg = uffdio_register(
            range: uffdio_range(start: range.start, len: range.length), mode: mode.rawValue, ioctls: 0)
        try check("UFFDIO_REGISTER \(range)") { CUserfaultfd_ioctl_register(descriptor, &arg) }
        return Ioctls(rawValue: arg.ioctls)
    }

    public func unregister(_ range: AddressRange) throws(UserfaultfdError) {
        var arg = uffdio_range(start: range.start, len: range.length)
        try check("UFFDIO_UNREGISTER \(range)") { CUserfaultfd_ioctl_unregister(descriptor, &arg) }
    }

    /// Wakes threads waiting on faults in `range` (after a `dontWake` fill, or when the page was already present).
    public func wake(_ range: AddressRange) throws(UserfaultfdError) {
        var arg = uffdio_range(start: range.start, len: range.length)
        try check("UFFDIO_WAKE \(range)") { CUserfaultfd_ioctl_wake(descriptor, &arg) }
    }

    // MARK: Filling

    /// `UFFDIO_COPY`: atomically fills `length` bytes at `destination` from `source` (in our address space).
    @inline(__always)
    public func copy(to destination: UInt64, from source: UnsafeRawPointer, length: Int, dontWake: Bool = false)
        -> CopyOutcome
    {
        var arg = uffdio_copy(
            dst: destination, src: UInt64(UInt(bitPattern: source)), len: UInt64(length),
            mode: dontWake ? CUserfaultfd_COPY_MODE_DONTWAKE : 0, copy: 0)
        let rc = CUserfaultfd_ioctl_copy(descriptor, &arg)
        return CopyOutcome.classify(returnValue: rc, errno: rc == 0 ? 0 : errno, result: arg.copy, requested: length)
    }

    /// `UFFDIO_ZEROPAGE`: maps zero pages over `[start, start + length)`.
    @inline(__always)
    public func zeroPage(at start: UInt64, length: Int, dontWake: Bool = false) -> CopyOutcome {
        var arg = uffdio_zeropage(
            range: uffdio_range(start: start, len: UInt64(length)),
            mode: dontWake ? CUserfaultfd_ZEROPAGE_MODE_DONTWAKE : 0, zeropage: 0)
        let rc = CUserfaultfd_ioctl_zeropage(descriptor, &arg)
        return CopyOutcome.classify(
            returnValue: rc, errno: rc == 0 ? 0 : errno, result: arg.zeropage, requested: length)
    }

    /// `UFFDIO_MOVE`: moves pages from `source` (in our address space, a uffd-registered or plain anonymous
    /// mapping) to `destination`, without copying. Needs the `move` feature.
    public func move(to destination: UInt64, from source: UInt64, length: Int, dontWake: Bool = false,
                     allowSourceHoles: Bool = false) -> CopyOutcome
    {
        var mode: UInt64 = dontWake ? CUserfaultfd_MOVE_MODE_DONTWAKE : 0
        if allowSourceHoles { mode |= CUserfaultfd_MOVE_MODE_ALLOW_SRC_HOLES }
        var arg = uffdio_move(dst: destination, src: source, len: UInt64(length), mode: mode, move: 0)
        let rc = CUserfaultfd_ioctl_move(descriptor, &arg)
        return CopyOutcome.classify(returnValue: rc, errno: rc == 0 ? 0 : errno, result: arg.move, requested: length)
    }

    /// `UFFDIO_POISON`: marks `[start, start + length)` so that touching it raises SIGBUS. Needs `poison`.
    public func poison(at start: UInt64, length: Int, dontWake: Bool = false) -> CopyOutcome {
        var arg = uffdio_poison(
            range: uffdio_range(start: start, len: UInt64(length)),
            mode: dontWake ? CUserfaultfd_POISON_MODE_DONTWAKE : 0, updated: 0)
        let rc = CUserfaultfd_ioctl_poison(descriptor, &arg)
        return CopyOutcome.classify(
            returnValue: rc, errno: rc == 0 ? 0 : errno, result: arg.updated, requested: length)
    }

    // MARK: Messages

    /// Reads whole `uffd_msg`s into `buffer`. Returns how many; 0 when none is queued (`EAGAIN`).
    public func readMessages(into buffer: UnsafeMutableRawBufferPointer) throws(UserfaultfdError) -> Int {
        switch valueOrErrno(retryOnInterrupt: true, { Glibc.read(descriptor, buffer.baseAddress, buffer.count) }) {
        case .success(let n): return n / Event.messageSize
        case .failure(.resourceTemporarilyUnavailable): return 0
        case .failure(let e): throw .systemCall("read(uffd)", e)
        }
    }

    /// Reads queued events (up to `max`). Unknown codes are returned as `UnknownEvent` values.
    public func readEvents(max: Int = 64) throws(UserfaultfdError) -> [Result<Event, UnknownEvent>] {
        var batch = EventBatch(capacity: max)
        let n = try batch.read(from: self)
        return (0..<n).map { batch[$0] }
    }

    private func check(_ call: @autoclosure () -> String, _ body: () -> Int32) throws(UserfaultfdError) {
        if case .failure(let e) = valueOrErrno(retryOnInterrupt: true, body) { throw .systemCall(call(), e) }
    }
}
