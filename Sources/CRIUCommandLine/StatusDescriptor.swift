#if canImport(Glibc)
import Glibc
#endif

/// CRIU's `--status-fd` contract: one zero byte once listening, then the descriptor is closed. A standard
/// descriptor is pointed at /dev/null instead, so later output cannot land in whatever reuses its number.
public func signalReady(on descriptor: Int32) {
    var ready: UInt8 = 0
    _ = write(descriptor, &ready, 1)
    if descriptor <= 2 {
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            dup2(null, descriptor)
            close(null)
        }
    } else {
        close(descriptor)
    }
}
