import SystemPackage

/// What a range ioctl (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_MOVE`, `UFFDIO_POISON`) achieved.
///
/// The kernel reports through two channels: the ioctl's errno and the struct's result field (bytes done, or a
/// negative errno). This type folds both into what a monitor has to decide on.
public enum CopyOutcome: Sendable, Hashable {
    /// The whole range was filled (`bytes` = the requested length).
    case done(bytes: Int)
    /// Only a prefix of `bytes` was filled; retry the rest. The kernel stops at the first page it cannot fill (e.g.
    /// one already present) and reports what it did as `EAGAIN` with the byte count in the result field (seen on
    /// 6.18: a 4-page copy whose third page was present gave `EAGAIN`, `copy` = 8192).
    case partial(bytes: Int)
    /// `EAGAIN` with nothing done: a non-cooperative event (fork, mremap, madvise, munmap) is queued and unread.
    /// Read and apply every queued event, then retry. Also covers kernels that leave the result field untouched.
    case retryAfterEvents
    /// `EEXIST`: the *first* page of the range is already present, so nothing was filled by this call (result field
    /// `-EEXIST`). A present page later in the range gives `.partial` instead. Wake waiters if the fault is pending.
    case alreadyPresent
    /// `ENOENT`/`EINVAL`: the range is no longer (or never was) a registered mapping of the process.
    case rangeGone(Errno)
    /// `ESRCH`/`ENOSPC`: the process's address space is gone or exiting.
    case processGone(Errno)
    /// Anything else (`EFAULT` on a bad source, `ENOMEM`, `EPERM`...).
    case failed(Errno)

    /// Bytes this call filled.
    public var bytesDone: Int {
        switch self {
        case .done(let n), .partial(let n): return n
        default: return 0
        }
    }

    /// Classifies a range ioctl from its return value, the errno it left and the struct's result field.
    /// `requested` is the length asked for; the result field must be pre-set to 0 before the call.
    public static func classify(returnValue: Int32, errno: Int32, result: Int64, requested: Int) -> CopyOutcome {
        if returnValue == 0 {
            return .done(bytes: result > 0 ? Int(result) : requested)
        }
        let error = Errno(rawValue: errno)
        switch error {
        case .resourceTemporarilyUnavailable:
            // The kernel stopped after `result` bytes (partial), or refused because of mmap_changing
            // (result -EAGAIN on current kernels, left at 0 by older ones).
            return result > 0 ? .partial(bytes: Int(result)) : .retryAfterEvents
        case .fileExists:
            // The kernel only says EEXIST when it filled nothing; a positive count would be a partial fill.
            return result > 0 ? .partial(bytes: Int(result)) : .alreadyPresent
        case .noSuchFileOrDirectory, .invalidArgument:
            return .rangeGone(error)
        case .noSuchProcess, .noSpace:
            return .processGone(error)
        default:
            return result > 0 ? .partial(bytes: Int(result)) : .failed(error)
        }
    }
}
