import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

extension PeerCredentials {
    /// Root manages every job; everyone else only their own.
    public func mayManage(jobOwnedBy owner: uid_t) -> Bool { uid == 0 || uid == owner }
}
