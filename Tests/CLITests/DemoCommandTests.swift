import Foundation
import TestSupport
import Testing

/// `lazy-pages demo` as a newcomer runs it (README's first command): piped output in order, a progress bar that ends
/// with the truth, clear refusals of sizes and counts it cannot do, and nothing left behind when it is interrupted.
@Suite(.serialized, .timeLimit(.minutes(20))) struct DemoCommandTests {
    /// Runs the demo with stdout and stderr on one pipe (as `2>&1 | tee` does); its lines and exit status.
    static func runMerged(_ arguments: [String]) throws -> (status: Int32, lines: [String]) {
        let (status, output) = try Spawn.runMerged([try BuiltProducts.path(of: "lazy-pages"), "demo"] + arguments)
        return (status, output.split(separator: "\n").map(String.init))
    }

    @Test func pipedOutputIsInOrderAndTheBarEndsWithTheTruth() async throws { try await oneHeavyTestAtATime {
        // exit-mid: every task exits half way, its other pages no longer needed; the bar must still end at 100%.
        let (status, lines) = try Self.runMerged(["--size", "16M", "--scenario", "exit-mid"])
        let text = lines.joined(separator: "\n")
        #expect(status == 0, "\(text)")
        func index(_ prefix: String) -> Int? { lines.firstIndex { $0.hasPrefix(prefix) } }
        let order = ["lazy-pages demo: writing a 16M image set of 2 tasks", "lazy-pages demo: monitor listening",
                     "[", "  task 1000: verified", "lazy-pages: 2 tasks", "lazy-pages demo: every byte of 2 tasks verified"]
        let positions = order.map(index)
        #expect(positions.allSatisfy { $0 != nil }, "\(order) in \(text)")
        #expect(positions.compactMap { $0 } == positions.compactMap { $0 }.sorted(), "out of order: \(text)")

        // The last bar line: 100%, and the whole restore's average rate, the summary's figure.
        let bar = try #require(lines.last { $0.hasPrefix("[") }, "\(text)")
        #expect(bar.hasPrefix("[##############################] 100%"), "\(bar)")
        let summary = try #require(lines.first { $0.hasPrefix("lazy-pages: 2 tasks") })
        let rate = try #require(summary.split(separator: " ").dropLast().last, "\(summary)")  // "…, 0.12 GiB/s"
        #expect(bar.contains("average \(rate) GiB/s"), "\(bar) beside \(summary)")
        #expect(!text.contains("FAILED"), "\(text)")
    }}

    @Test func sizesAndCountsItCannotDoAreClearErrors() async throws { try await oneHeavyTestAtATime {
        let lazyPages = try BuiltProducts.path(of: "lazy-pages")
        let tiny = try Spawn.run([lazyPages, "demo", "--size", "1K"])
        #expect(tiny.exitCode == 64, "\(tiny.stderr)")
        #expect(tiny.stderr.contains("--size 1K is too small: each task gets at least 64 pages (256K), so 2 tasks need at least 512K"),
                "\(tiny.stderr)")
        #expect(tiny.stdout.isEmpty, "\(tiny.stdout)")

        let negative = try Spawn.run([lazyPages, "demo", "--tasks", "-1"])
        #expect(negative.exitCode == 64, "\(negative.stderr)")
        #expect(negative.stderr.contains("--tasks must be 1...64, not -1"), "\(negative.stderr)")
        #expect(!negative.stderr.contains("Missing value"), "\(negative.stderr)")

        // More than this machine has: refused before anything is written.
        let huge = try Spawn.run([lazyPages, "demo", "--size", "64T"])
        #expect(huge.exitCode == 1, "\(huge.stderr)")
        #expect(huge.stderr.contains("a 64T demo needs"), "\(huge.stderr)")
        #expect(huge.stderr.contains("of disk in /tmp"), "\(huge.stderr)")
        #expect(huge.stderr.contains("of memory for the restored tasks"), "\(huge.stderr)")
        #expect(huge.stderr.contains("choose a smaller --size"), "\(huge.stderr)")
        #expect(!huge.stdout.contains("writing"), "\(huge.stdout)")
    }}

    @Test(arguments: [SIGTERM, SIGINT])
    func aSignalRemovesTheImageDirectory(signal: Int32) async throws { try await oneHeavyTestAtATime {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try BuiltProducts.path(of: "lazy-pages"))
        // Large enough that writing the images takes a while: the signal arrives while the directory fills.
        process.arguments = ["demo", "--size", "512M"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // The first line names the directory; it is printed (line-buffered, into a pipe) before writing starts.
        var first = Data()
        while !first.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            first += chunk
        }
        let line = String(decoding: first, as: UTF8.self)
        let directory = try #require(line.split(separator: " ").last.map { String($0.prefix { $0 != "\n" }) },
                                     "\(line)")
        #expect(directory.hasPrefix("/tmp/lazy-pages-demo."), "\(line)")
        kill(process.processIdentifier, signal)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        _ = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == signal,
                "ended by \(process.terminationReason) \(process.terminationStatus): \(stderr)")
        #expect(stderr.contains("lazy-pages demo: interrupted by \(signal == SIGINT ? "SIGINT" : "SIGTERM"); removed \(directory)"),
                "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory), "\(directory) left behind")
        #expect(!FileManager.default.fileExists(atPath: directory + ".removing"), "\(directory).removing left behind")
    }}
}
