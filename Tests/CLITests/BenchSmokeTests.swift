import Foundation
import TestSupport
import Testing

/// `lazy-pages bench` stays runnable: one quick run on a 16 MiB image prints every scenario. (Speed is the
/// benchmark's business, never a test's: nothing here checks a number.)
@Suite struct BenchSmokeTests {
    @Test(.timeLimit(.minutes(20)))
    func quickBenchPrintsEveryScenario() async throws { try await oneHeavyTestAtATime {
        let exe = try #require(Self.buildDirectory()).appending("/lazy-pages")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = ["bench", "--size", "16M", "--quick"]
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "bench failed:\n\(out)\n\(err)")
        for needle in [
            "ceiling UFFDIO_COPY 64 KiB", "ceiling UFFDIO_COPY 4 MiB", "floor   minimal handler", "(a)  demand only",
            "(a1) demand, fault-around 1", "(b)  fill, idle process", "(c)  working process + fill",
            "(d)  fork-storm", "(e-a) remote, demand only", "(e-b) remote, fill, idle", "(f)  16 x 1 MiB at once",
            "(a) fault p50 / floor", "(b) fill / ceiling", "(c) working / fill", "(d) forking, s per GiB",
            "(e-a) remote p50 / floor", "(e-b) remote fill", "memory (b) anon peak",
        ] {
            #expect(out.contains(needle), "missing '\(needle)' in:\n\(out)")
        }
        #expect(!out.contains("scenarios that failed"), "\(out)")
    }}

    /// The directory of the test bundle's executable: where SwiftPM puts lazy-pages, lazy-pagesd and the C helpers.
    static func buildDirectory() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return nil }
        return String(path[..<slash])
    }
}
