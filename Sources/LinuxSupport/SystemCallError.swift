import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: the call (as the message should name it) and the errno it left. The one error type for the
/// plumbing of every module; its text is `call: strerror(errno)`.
public struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    public var call: String
    public var errno: Int32

    /// `errno` defaults to the calling thread's current one: build the error straight after the failed call.
    public init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    public init(_ call: String, _ errno: Errno) { self.init(call, errno: errno.rawValue) }

    /// The C library's text for `errno` (`strerror`): the one place that asks for it.
    public static func reason(_ errno: Int32 = Glibc.errno) -> String { String(cString: strerror(errno)) }

    /// The C library's text for this error's errno.
    public var reason: String { Self.reason(errno) }

    public var description: String { "\(call): \(reason)" }
}

/// Calls `body` (a system call returning -1 and setting `errno` on failure) and returns its result or the errno it
/// left, calling it again after an interruption (`EINTR`) when `retryOnInterrupt` — the one EINTR loop, as
/// swift-system's `valueOrErrno(retryOnInterrupt:)`.
@inline(__always)
public func valueOrErrno<Value: FixedWidthInteger>(
    retryOnInterrupt: Bool = true, _ body: () -> Value
) -> Result<Value, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let failure = Errno(rawValue: Glibc.errno)
        if retryOnInterrupt && failure == .interrupted { continue }
        return .failure(failure)
    }
}

/// `body`'s result, called again after every `EINTR`: -1 means it failed otherwise, with `errno` still telling how
/// (for call sites that treat some errnos, such as `EAGAIN`, as ordinary results).
@inline(__always)
public func retryingOnInterrupt<Value: FixedWidthInteger>(_ body: () -> Value) -> Value {
    switch valueOrErrno(retryOnInterrupt: true, body) {
    case .success(let value): return value
    case .failure(let failure):
        Glibc.errno = failure.rawValue
        return -1
    }
}

/// `body`'s result, called again after every `EINTR`; any other failure thrown as a `SystemCallError` naming `call`.
@inline(__always)
public func systemCall<Value: FixedWidthInteger>(
    _ call: @autoclosure () -> String, retryOnInterrupt: Bool = true, _ body: () -> Value
) throws(SystemCallError) -> Value {
    switch valueOrErrno(retryOnInterrupt: retryOnInterrupt, body) {
    case .success(let value): return value
    case .failure(let failure): throw SystemCallError(call(), failure)
    }
}
