#if canImport(Glibc)
import Glibc
#endif

/// The service side of systemd socket activation (`sd_listen_fds_with_names(3)`): sockets systemd opened for us
/// arrive as descriptors 3, 4, ... with `LISTEN_FDS` (how many), `LISTEN_PID` (whom they are for) and
/// `LISTEN_FDNAMES` (colon-separated names, from `FileDescriptorName=`).
public enum SocketActivation {
    /// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// One passed socket.
    public struct Socket: Sendable, Equatable {
        public var descriptor: Int32
        /// Its `FileDescriptorName=`, or "unknown" as systemd says when none was set.
        public var name: String
    }

    /// Why the activation variables could not be used.
    public struct Error: Swift.Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The sockets passed to process `pid` (ours by default). Empty when `LISTEN_PID` is unset or names another
    /// process (the variables were inherited, not meant for us). The descriptors are made close-on-exec so that
    /// they are not passed further.
    public static func sockets(environment: [String: String] = currentEnvironment(), pid: pid_t = getpid())
        throws(Error) -> [Socket]
    {
        guard let pidText = environment["LISTEN_PID"], let countText = environment["LISTEN_FDS"] else { return [] }
        guard let listenPID = pid_t(pidText), listenPID > 0 else {
            throw Error(description: "LISTEN_PID is not a process id: \"\(pidText)\"")
        }
        guard listenPID == pid else { return [] }
        guard let count = Int32(countText), count >= 0, count <= 4096 else {
            throw Error(description: "LISTEN_FDS is not a descriptor count: \"\(countText)\"")
        }
        var names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
            ?? []
        if names.count != Int(count) {
            guard names.isEmpty else {
                throw Error(description: "LISTEN_FDNAMES has \(names.count) names for \(count) descriptors")
            }
            names = Array(repeating: "unknown", count: Int(count))
        }
        var result: [Socket] = []
        for i in 0..<count {
            let fd = firstDescriptor + i
            let flags = fcntl(fd, F_GETFD)
            guard flags >= 0 else { throw Error(description: "LISTEN_FDS names descriptor \(fd), which is not open") }
            _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC)
            result.append(Socket(descriptor: fd, name: names[Int(i)]))
        }
        return result
    }

    /// Removes the activation variables from the environment (so children do not see them), as
    /// `sd_listen_fds(unset_environment=1)` does.
    public static func unsetEnvironment() {
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
    }
}
