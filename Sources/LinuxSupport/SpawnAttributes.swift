#if canImport(Glibc)
import Glibc
#endif

/// `posix_spawn` attributes that start a child with an empty signal mask and every signal at its default
/// disposition, plus `flags` (`POSIX_SPAWN_*`) and, with `processGroup`, that process group (0: its own).
///
/// A child inherits the signal mask of the thread that spawns it: a thread of a runtime that blocks signals (Swift's
/// pool, a test runner) would otherwise pass its blocked SIGTERM to the child and to everything the child starts,
/// and a `kill` of one of them would stay pending forever (issue 15: a script's helper that never ended).
public final class SpawnAttributes {
    public var value = posix_spawnattr_t()

    public init(flags: Int32 = 0, processGroup: pid_t? = nil) {
        posix_spawnattr_init(&value)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&value, &noSignals)
        posix_spawnattr_setsigdefault(&value, &allSignals)
        var all = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | flags
        if let processGroup {
            posix_spawnattr_setpgroup(&value, processGroup)
            all |= Int32(POSIX_SPAWN_SETPGROUP)
        }
        posix_spawnattr_setflags(&value, Int16(all))
    }

    deinit { posix_spawnattr_destroy(&value) }
}
