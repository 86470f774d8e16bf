import Foundation
import LinuxSupport

/// `-d`: fork into the background the way `daemon(3)` does, keeping the working directory and pointing
/// stdin/stdout/stderr at /dev/null. The parent exits only once the child calls the returned closure (after it
/// wrote its pidfile and is listening): 0 then, 1 if the child died first. Called before any thread is started.
public func detach() throws -> () -> Void {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    let pid = fork()
    if pid < 0 { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    if pid > 0 {
        close(fds[1])
        var byte: UInt8 = 0
        let n = retryingOnInterrupt { read(fds[0], &byte, 1) }
        _exit(n == 1 ? 0 : 1)
    }
    close(fds[0])
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    _ = setsid()
    let null = open("/dev/null", O_RDWR)
    if null >= 0 {
        dup2(null, 0)
        dup2(null, 1)
        dup2(null, 2)
        if null > 2 { close(null) }
    }
    let ready = fds[1]
    return {
        var byte: UInt8 = 1
        _ = write(ready, &byte, 1)
        close(ready)
    }
}
