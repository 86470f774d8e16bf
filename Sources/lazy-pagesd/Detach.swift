import Foundation

/// `-d`: fork into the background the way `daemon(3)` does (the parent exits 0), keeping the working directory
/// and pointing stdin/stdout/stderr at /dev/null. Called before any thread is started.
func detach() throws {
    let pid = fork()
    if pid < 0 { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    if pid > 0 { _exit(0) }
    _ = setsid()
    let null = open("/dev/null", O_RDWR)
    if null >= 0 {
        dup2(null, 0)
        dup2(null, 1)
        dup2(null, 2)
        if null > 2 { close(null) }
    }
}
