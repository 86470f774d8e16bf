import Foundation
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Temporary directories for tests. Every one lives under a single root per test process, `/tmp/lp-tests.<pid>`
/// (mode 0755, so daemons a test runs as another uid can reach their own 0700 subdirectories as before), which is
/// removed with everything in it when the process exits, whether its tests passed or failed; a root left behind by
/// a test process that crashed is removed by the next one. Suites therefore may keep a directory in a `static let`
/// for the whole run, and a test that throws before its `defer` leaks nothing.
///
/// The root stays under `/tmp` (not `$TMPDIR`) to keep socket paths inside it well below `sun_path`'s 108 bytes.
public enum TestScratch {
    /// A fresh directory `<root>/<prefix>.XXXXXX` (mode 0700); remove it early if you like, the root goes anyway.
    public static func makeDirectory(_ prefix: String) throws -> String {
        let root = try Self.root.get()
        var template = Array("\(root)/\(prefix).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw ScratchError(description: "mkdtemp \(root)/\(prefix).XXXXXX: \(SystemCallError.reason(errno))")
        }
        return String(cString: made)
    }

    /// This process's root (created on first use).
    public static var rootPath: String { "/tmp/lp-tests.\(creator)" }

    private static let rootPrefix = "lp-tests."
    private static let creator = getpid()

    private static let root: Result<String, ScratchError> = {
        removeOrphanedRoots()
        let path = rootPath
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            return .failure(ScratchError(description: "mkdir \(path): \(SystemCallError.reason(errno))"))
        }
        chmod(path, 0o755)  // whatever the umask
        atexit { TestScratch.removeRoot() }
        return .success(path)
    }()

    /// At exit: the root and everything in it, only in the process that made it (not in a forked child).
    private static func removeRoot() {
        guard getpid() == creator else { return }
        try? FileManager.default.removeItem(atPath: rootPath)
    }

    /// Roots of test processes that no longer exist (a crashed or killed run).
    private static func removeOrphanedRoots() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/tmp") else { return }
        for name in names where name.hasPrefix(rootPrefix) {
            guard let pid = Int32(name.dropFirst(rootPrefix.count)), pid != creator else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { try? FileManager.default.removeItem(atPath: "/tmp/" + name) }
        }
    }

    public struct ScratchError: Error, CustomStringConvertible {
        public let description: String
    }
}

/// A fresh temporary directory under the test root (see `TestScratch`).
public func makeTemporaryDirectory(_ prefix: String = "lp-test") throws -> String {
    try TestScratch.makeDirectory(prefix)
}

/// A fresh temporary directory under the test root, removed when the value goes away (and with the root at exit if
/// it outlives its test).
public final class TemporaryDirectory {
    public let path: String

    public init(_ prefix: String = "lp-test") throws { path = try TestScratch.makeDirectory(prefix) }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// `path/name`.
    public func sub(_ name: String) -> String { "\(path)/\(name)" }
}
