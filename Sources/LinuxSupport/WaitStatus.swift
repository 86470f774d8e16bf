#if canImport(Glibc)
import Glibc
#endif

/// How a child ended, decoded from the status `waitpid`/`wait4` report (the `WIFEXITED`/`WEXITSTATUS`/`WTERMSIG`
/// macros, which Swift cannot import): the one decoder.
public enum WaitStatus: Equatable, Sendable, CustomStringConvertible {
    /// It exited with this code.
    case exited(Int32)
    /// A signal ended it.
    case signalled(Int32)

    /// Decodes a raw status.
    public init(_ raw: Int32) {
        let signal = raw & 0x7F
        self = signal == 0 ? .exited((raw >> 8) & 0xFF) : .signalled(signal)
    }

    /// The exit code, or minus the signal that ended it (the convention of every report here: `-SIGKILL`).
    public var code: Int32 {
        switch self {
        case .exited(let code): code
        case .signalled(let signal): -signal
        }
    }

    /// The exit code, nil when a signal ended it.
    public var exitCode: Int32? {
        if case .exited(let code) = self { return code }
        return nil
    }

    public var description: String {
        switch self {
        case .exited(let code): "exit \(code)"
        case .signalled(let signal): "signal \(signal)"
        }
    }

    /// Waits for `pid` (`waitpid`, retried on `EINTR`); nil when it cannot be waited for (`errno` says why), or, with
    /// `WNOHANG` in `options`, while it still runs.
    public static func wait(for pid: pid_t, options: Int32 = 0) -> WaitStatus? {
        var raw: Int32 = 0
        guard retryingOnInterrupt({ waitpid(pid, &raw, options) }) > 0 else { return nil }
        return WaitStatus(raw)
    }
}
