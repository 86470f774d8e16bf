import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pages page-server ARGS` as a child process, started and listening: the port is read from its stdout line
/// "page-server: listening on port N". Killed (SIGTERM) when `stop()`ped or released.
final class PageServerProcess {
    let process: DaemonProcess
    let port: UInt16
    let directory: String

    init(_ arguments: [String]) throws {
        directory = try makeTemporaryDirectory()
        process = try DaemonProcess(try BuiltProducts.path(of: "lazy-pages"), ["page-server"] + arguments,
                                    environment: [], directory: directory)
        var port: UInt16 = 0
        // Waiting for a file to say something: a safety-bounded poll (30 s), not synchronisation of the test.
        for _ in 0..<3000 where port == 0 {
            if let line = process.stdout.split(separator: "\n").first(where: { $0.hasPrefix("page-server: listening on port ") }) {
                port = UInt16(line.split(separator: " ").last!) ?? 0
            } else if kill(process.pid, 0) != 0 {
                break
            } else {
                usleep(10_000)
            }
        }
        self.port = port
        guard port != 0 else {
            kill(process.pid, SIGKILL)
            throw CertificateError("the page server never said its port: \(process.stderr)")
        }
    }

    var stderr: String { process.stderr }
    var alive: Bool { kill(process.pid, 0) == 0 }

    /// Waits (bounded by `timeout` seconds, polling the log file) until stderr holds `text`.
    func waitForLog(_ text: String, timeout: Double = 30) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        while ContinuousClock.now < deadline {
            if stderr.contains(text) { return true }
            usleep(20_000)
        }
        return stderr.contains(text)
    }

    /// SIGTERM, then its exit status (minus the signal).
    @discardableResult
    func stop() -> Int32 {
        kill(process.pid, SIGTERM)
        let status = process.wait()
        try? FileManager.default.removeItem(atPath: directory)
        return status
    }
}
