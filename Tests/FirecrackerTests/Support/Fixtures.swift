import TestSupport
import Foundation
import LazyPagesEngine
import LazyPagesFirecracker
import Logging

/// A temporary directory with a snapshot memory file of known, never-zero bytes.
final class SnapshotFixture {
    let directory: String
    let memoryFile: String
    let socket: String

    init(bytes: Int) throws {
        directory = try makeTemporaryDirectory("fc-test")
        memoryFile = directory + "/memory"
        socket = directory + "/uffd.sock"
        var data = [UInt8](repeating: 0, count: bytes)
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in words.indices {
                // Distinct per 8 bytes and never zero in any byte lane that matters: the low byte is odd.
                words[i] = (UInt64(i) &+ 1) &* 0x9E37_79B9_7F4A_7C15 | 0x0101_0101_0101_0101
            }
        }
        guard FileManager.default.createFile(atPath: memoryFile, contents: Data(data)) else {
            throw Emulator.Failure(description: "cannot write \(memoryFile)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func session(backgroundFill: Bool = false) throws -> FirecrackerSession {
        var configuration = EngineConfiguration()
        configuration.backgroundFill = backgroundFill
        var logger = Logger(label: "firecracker-test")
        logger.logLevel = .warning
        return try FirecrackerSession(
            socketPath: socket, memoryFile: memoryFile, configuration: configuration, logger: logger)
    }
}

/// Runs `session` on a dedicated thread; the returned closure waits for its outcome.
func start(_ session: FirecrackerSession) -> () -> RestoreOutcome { onThread { session.run() } }

/// Reserves 2 MiB huge pages for a test (`/proc/sys/vm/nr_hugepages`) and gives them back afterwards.
final class HugePageReservation {
    private static let control = "/proc/sys/vm/nr_hugepages"
    private let previous: Int

    static func current() -> Int? {
        (try? String(contentsOfFile: control, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    static func set(_ count: Int) { try? "\(count)\n".write(toFile: control, atomically: false, encoding: .utf8) }

    /// True when the kernel hands out at least one more 2 MiB huge page on request (checked once).
    static let available: Bool = {
        guard let before = current() else { return false }
        set(before + 1)
        let after = current() ?? before
        set(before)
        return after > before
    }()

    /// Adds `count` huge pages to the pool; fails when the kernel gives fewer.
    init(_ count: Int) throws {
        previous = Self.current() ?? 0
        Self.set(previous + count)
        let now = Self.current() ?? previous
        guard now >= previous + count else {
            Self.set(previous)
            throw Emulator.Failure(description: "asked the kernel for \(count) huge pages, got \(now - previous)")
        }
    }

    deinit { Self.set(previous) }
}
