import Foundation

/// Finds executables built next to the test bundle (`.build/<triple>/debug/`).
public enum BuiltProducts {
    /// The absolute path of the built executable `name`.
    ///
    /// Walks up from the running test binary (`/proc/self/exe`, then `CommandLine.arguments[0]`, then the main
    /// bundle) until a directory holds an executable `name`. Fails the calling test when none does.
    public static func path(of name: String) throws -> String {
        var starts: [URL] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            starts.append(URL(fileURLWithPath: exe))
        }
        starts.append(URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL)
        starts.append(Bundle.main.bundleURL)
        for start in starts {
            var directory = start.deletingLastPathComponent()
            for _ in 0..<6 {
                let candidate = directory.appendingPathComponent(name).path
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
                directory = directory.deletingLastPathComponent()
            }
        }
        throw NotBuilt(name: name, searched: starts.map(\.path))
    }

    public struct NotBuilt: Error, CustomStringConvertible {
        let name: String
        let searched: [String]
        public var description: String { "built executable \(name) not found near \(searched)" }
    }
}
