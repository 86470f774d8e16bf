import Foundation
import LinuxSupport

/// What one descriptor of a spawned child is.
public enum ChildDescriptor {
    /// `/dev/null`, read-only.
    case null
    /// A file, created or truncated, for writing.
    case file(String)
    /// A duplicate of one of our descriptors.
    case duplicate(Int32)
}

/// The one way the tests start a process: `posix_spawn` (the test process is never forked) with the listed
/// descriptors, default signal dispositions and an empty signal mask (the test runner's threads block signals the
/// child must obey), and our environment plus `environment` (minus the variables named in `removing`); with
/// `newSession`, in a session (and process group) of its own, as `setsid` would. Returns the child's pid.
public func spawnChild(
    _ path: String, _ arguments: [String], descriptors: [(Int32, ChildDescriptor)],
    environment: [String] = [], removing: Set<String> = [], newSession: Bool = false
) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (target, source) in descriptors {
        switch source {
        case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_RDONLY, 0)
        case .file(let file): posix_spawn_file_actions_addopen(&actions, target, file, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        case .duplicate(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
        }
    }
    // POSIX_SPAWN_SETSID (glibc 2.26) is a GNU extension the Glibc module does not export.
    // An empty signal mask and default dispositions (the test runner's threads block SIGTERM, among others).
    let attributes = SpawnAttributes(flags: newSession ? 0x80 : 0)
    let inherited = ProcessInfo.processInfo.environment.filter { !removing.contains($0.key) }
        .map { "\($0.key)=\($0.value)" }
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) }
    let envp: [UnsafeMutablePointer<CChar>?] = (inherited + environment).map { strdup($0) }
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var child: pid_t = 0
    let rc = (argv + [nil]).withUnsafeBufferPointer { a in
        (envp + [nil]).withUnsafeBufferPointer { e in
            posix_spawn(&child, path, &actions, &attributes.value, a.baseAddress!, e.baseAddress!)
        }
    }
    guard rc == 0 else { throw SpawnError(description: "posix_spawn \(path): \(SystemCallError.reason(rc))") }
    return child
}

public struct SpawnError: Error, CustomStringConvertible {
    public let description: String
}
