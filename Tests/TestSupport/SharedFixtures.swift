import Foundation

/// The real data the tests restore (`shared/fixtures/` beside the clone: `../shared/fixtures/<name>` relative to the
/// package root, found from this file, never from an absolute path of some build machine). README tells what
/// `../shared` is; a test given a missing fixture fails with ImageSet's error naming the missing file.
public enum SharedFixtures {
    /// `<package>/../shared/fixtures/<name>`, standardized.
    public static func path(_ name: String) -> String {
        packageRoot.appendingPathComponent("../shared/fixtures").appendingPathComponent(name).standardized.path
    }

    /// The real CRIU 4.2 dump of a two-process tree (pids 13288 and 13290; see its README).
    public static var criuTreeproc: String { path("criu-treeproc") }

    /// The package root: this file is `<root>/Tests/TestSupport/SharedFixtures.swift`.
    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }
}
