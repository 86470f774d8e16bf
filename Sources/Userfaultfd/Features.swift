import CUserfaultfd

/// Feature bits negotiated with `UFFDIO_API` (`uffdio_api.features`).
///
/// Unknown bits are kept: a newer kernel's features survive a round trip through this type.
public struct Features: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let pageFaultFlagWP = Features(rawValue: CUserfaultfd_FEATURE_PAGEFAULT_FLAG_WP)
    public static let eventFork = Features(rawValue: CUserfaultfd_FEATURE_EVENT_FORK)
    public static let eventRemap = Features(rawValue: CUserfaultfd_FEATURE_EVENT_REMAP)
    public static let eventRemove = Features(rawValue: CUserfaultfd_FEATURE_EVENT_REMOVE)
    public static let missingHugetlbfs = Features(rawValue: CUserfaultfd_FEATURE_MISSING_HUGETLBFS)
    public static let missingShmem = Features(rawValue: CUserfaultfd_FEATURE_MISSING_SHMEM)
    public static let eventUnmap = Features(rawValue: CUserfaultfd_FEATURE_EVENT_UNMAP)
    public static let sigbus = Features(rawValue: CUserfaultfd_FEATURE_SIGBUS)
    public static let threadID = Features(rawValue: CUserfaultfd_FEATURE_THREAD_ID)
    public static let minorHugetlbfs = Features(rawValue: CUserfaultfd_FEATURE_MINOR_HUGETLBFS)
    public static let minorShmem = Features(rawValue: CUserfaultfd_FEATURE_MINOR_SHMEM)
    public static let exactAddress = Features(rawValue: CUserfaultfd_FEATURE_EXACT_ADDRESS)
    public static let wpHugetlbfsShmem = Features(rawValue: CUserfaultfd_FEATURE_WP_HUGETLBFS_SHMEM)
    public static let wpUnpopulated = Features(rawValue: CUserfaultfd_FEATURE_WP_UNPOPULATED)
    public static let poison = Features(rawValue: CUserfaultfd_FEATURE_POISON)
    public static let wpAsync = Features(rawValue: CUserfaultfd_FEATURE_WP_ASYNC)
    public static let move = Features(rawValue: CUserfaultfd_FEATURE_MOVE)

    /// The four non-cooperative events a post-copy monitor must see (what CRIU's restorer asks for).
    public static let nonCooperativeEvents: Features = [.eventFork, .eventRemap, .eventRemove, .eventUnmap]

    /// Every feature bit this module has a name for, in bit order.
    public static let named: [(Features, String)] = [
        (.pageFaultFlagWP, "pagefault_flag_wp"), (.eventFork, "event_fork"), (.eventRemap, "event_remap"),
        (.eventRemove, "event_remove"), (.missingHugetlbfs, "missing_hugetlbfs"), (.missingShmem, "missing_shmem"),
        (.eventUnmap, "event_unmap"), (.sigbus, "sigbus"), (.threadID, "thread_id"),
        (.minorHugetlbfs, "minor_hugetlbfs"), (.minorShmem, "minor_shmem"), (.exactAddress, "exact_address"),
        (.wpHugetlbfsShmem, "wp_hugetlbfs_shmem"), (.wpUnpopulated, "wp_unpopulated"), (.poison, "poison"),
        (.wpAsync, "wp_async"), (.move, "move"),
    ]

    /// Names of the set bits; unknown bits appear as `bit<N>`.
    public var names: [String] { bitNames(rawValue, Features.named.map { ($0.0.rawValue, $0.1) }) }
}

/// The ioctls a uffd (from `UFFDIO_API`) or a registered range (from `UFFDIO_REGISTER`) supports.
/// Bit `n` stands for the ioctl whose number is `n`.
public struct Ioctls: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    private init(number: Int32) { rawValue = 1 << UInt64(number) }

    public static let register = Ioctls(number: CUserfaultfd_NR_REGISTER)
    public static let unregister = Ioctls(number: CUserfaultfd_NR_UNREGISTER)
    public static let wake = Ioctls(number: CUserfaultfd_NR_WAKE)
    public static let copy = Ioctls(number: CUserfaultfd_NR_COPY)
    public static let zeroPage = Ioctls(number: CUserfaultfd_NR_ZEROPAGE)
    public static let move = Ioctls(number: CUserfaultfd_NR_MOVE)
    public static let writeProtect = Ioctls(number: CUserfaultfd_NR_WRITEPROTECT)
    public static let `continue` = Ioctls(number: CUserfaultfd_NR_CONTINUE)
    public static let poison = Ioctls(number: CUserfaultfd_NR_POISON)
    public static let api = Ioctls(number: CUserfaultfd_NR_API)

    public static let named: [(Ioctls, String)] = [
        (.register, "register"), (.unregister, "unregister"), (.wake, "wake"), (.copy, "copy"),
        (.zeroPage, "zeropage"), (.move, "move"), (.writeProtect, "writeprotect"), (.continue, "continue"),
        (.poison, "poison"), (.api, "api"),
    ]

    public var names: [String] { bitNames(rawValue, Ioctls.named.map { ($0.0.rawValue, $0.1) }) }
}

/// How a range is registered (`UFFDIO_REGISTER_MODE_*`).
public struct RegisterMode: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let missing = RegisterMode(rawValue: CUserfaultfd_REGISTER_MODE_MISSING)
    public static let writeProtect = RegisterMode(rawValue: CUserfaultfd_REGISTER_MODE_WP)
    public static let minor = RegisterMode(rawValue: CUserfaultfd_REGISTER_MODE_MINOR)
}

/// Flags for creating a uffd (`userfaultfd(2)` flags / `USERFAULTFD_IOC_NEW` argument).
public struct OpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let closeOnExec = OpenFlags(rawValue: O_CLOEXEC)
    public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
    /// Only faults raised in user mode are trapped; faults inside the kernel then fail (unfit for post-copy).
    public static let userModeOnly = OpenFlags(rawValue: CUserfaultfd_USER_MODE_ONLY)
}

func bitNames(_ raw: UInt64, _ table: [(UInt64, String)]) -> [String] {
    var names: [String] = []
    var rest = raw
    for (bit, name) in table where raw & bit != 0 {
        names.append(name)
        rest &= ~bit
    }
    var bit: UInt64 = 0
    while rest != 0 {
        if rest & 1 != 0 { names.append("bit\(bit)") }
        rest >>= 1
        bit += 1
    }
    return names
}
