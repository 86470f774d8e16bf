import Foundation
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// One `lazy-pages page-server -D IMAGES --address 127.0.0.1 --port 0` for scenario (e), started and ready: the
/// port is read from its first stdout line ("page-server: listening on port N"). `stop()` ends it and returns its
/// rusage (the server's CPU time for the restore it served).
final class PageServerRun {
    static let address = "127.0.0.1"
    let process: ChildProcess
    let port: UInt16

    /// `extraArguments` go after the usual ones (e.g. `--tls*`).
    init(binary: String, imagesDirectory: String, scratch: String, extraArguments: [String] = []) throws {
        let ends = try makePipe()
        let readEnd = ends.read
        defer { close(readEnd) }
        // Profiling hook, as for the daemon: $LP_BENCH_SERVER_PREFIX (e.g. "/usr/bin/strace -f -c -o /tmp/s").
        var path = binary
        var arguments = ["page-server", "-D", imagesDirectory, "--address", Self.address, "--port", "0"] + extraArguments
        if let prefix = ProcessInfo.processInfo.environment["LP_BENCH_SERVER_PREFIX"], !prefix.isEmpty {
            let words = prefix.split(separator: " ").map(String.init)
            path = words[0]
            arguments = Array(words.dropFirst()) + [binary] + arguments
        }
        do {
            // stdout is the pipe (the dup2 comes after ChildProcess opens its stdout file, so it wins).
            process = try ChildProcess(
                path: path, arguments: arguments, stdoutPath: "/dev/null", stderrPath: scratch + "/page-server.err",
                descriptors: [(ends.write, 1)])
        } catch {
            close(ends.write)
            throw error
        }
        close(ends.write)
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.last != UInt8(ascii: "\n") {
            var entry = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            let ready = retryingOnInterrupt { Glibc.poll(&entry, 1, 30_000) }
            guard ready > 0, read(readEnd, &byte, 1) == 1 else { break }
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("page-server: listening on port"), let port = text.split(separator: " ").last.flatMap({ UInt16($0) })
        else {
            Glibc.kill(process.pid, SIGKILL)
            _ = try? process.waitForExit()
            throw BenchError("lazy-pages page-server did not start: '\(text)' \(process.errors().suffix(500))")
        }
        self.port = port
    }

    /// The daemon's options for fetching from this server.
    var daemonArguments: [String] { ["--page-server", "--address", Self.address, "--port", String(port)] }

    /// Ends the server (SIGTERM) and returns its usage.
    @discardableResult
    func stop() throws -> ChildUsage {
        if let usage = process.usage { return usage }
        Glibc.kill(process.pid, SIGTERM)
        return try process.waitForExit()
    }
}
