import Foundation
import LazyPagesControl
import TestSupport
import Testing

/// The Prometheus endpoint, scraped over HTTP after a restore.
@Suite(.serialized) struct MetricsTests {
    @Test(.timeLimit(.minutes(2))) func aScrapeHasEverySeries() throws {
        let daemon = try ServiceDaemon(["--metrics-address", "127.0.0.1:0", "--metrics-per-job"])
        // READY's STATUS says where the metrics are (port 0: the kernel chose).
        let port = try #require(daemon.readyMessage.split(separator: ":").last
            .flatMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        let memory = try MemoryFixture(bytes: 1 << 20)
        let socket = memory.socket("vm")
        let id = try daemon.add(["firecracker", "--socket", socket, "--mem-file", memory.memoryFile])
        let vm = try Emulator(socket: socket, memoryFile: memory.memoryFile, regions: ["4k:1M"], balloons: ["0:4K:8K"])
        #expect(vm.finish() == .exited(0), "\(vm.lines)")
        #expect(try daemon.cli(["wait", id]).exitCode == 0)

        let body = try scrape(port: port, path: "/metrics")
        #expect(body.hasPrefix("HTTP/1.1 200 OK"))
        for series in [
            "lazy_pages_faults_total ", "lazy_pages_copy_outcomes_total{outcome=\"copied\"} ",
            "lazy_pages_copy_outcomes_total{outcome=\"zero\"} ",
            "lazy_pages_copy_outcomes_total{outcome=\"already_present\"} ",
            "lazy_pages_copy_outcomes_total{outcome=\"retried_after_events\"} ",
            "lazy_pages_copy_outcomes_total{outcome=\"process_gone\"} ",
            "lazy_pages_copy_outcomes_total{outcome=\"error\"} ",
            "lazy_pages_pages_delivered_total{how=\"fault\"} ", "lazy_pages_bytes_delivered_total ",
            "lazy_pages_eagain_retries_total ", "lazy_pages_jobs{state=\"completed\"} 1",
            "lazy_pages_job_pages_home{job=\"\(id)\"} 25", "lazy_pages_job_pages_expected{job=\"\(id)\"} 256",
            "lazy_pages_fault_service_microseconds_bucket{le=\"+Inf\"} ", "lazy_pages_fault_service_microseconds_count ",
        ] {
            #expect(body.contains("\n" + series), "missing \(series)")
        }
        // Every page of the 1 MiB guest came home, but for those the balloon removed before they were copied.
        let home = body.split(separator: "\n").first { $0.hasPrefix("lazy_pages_job_pages_home{job=\"\(id)\"} ") }
            .flatMap { Double($0.split(separator: " ").last!) }
        #expect(home.map { (254...256).contains($0) } == true, "\(String(describing: home))")
        // Two balloon pages came back as zeros.
        #expect(body.contains("\nlazy_pages_pages_delivered_total{how=\"zero\"} 2\n"), "\(body)")
        #expect(try scrape(port: port, path: "/other").hasPrefix("HTTP/1.1 404"))
    }

    static func port(of daemon: ServiceDaemon) throws -> UInt16 {
        try #require(daemon.readyMessage.split(separator: ":").last
            .flatMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
    }

    /// Issue 13, finding 7: a client that trickles its request one byte a second used to hold the endpoint (one
    /// client at a time, a per-read timeout) for as long as it liked. Now a scrape beside it is answered at once, and
    /// the trickler is cut off at the request deadline (5 s) with a log line.
    @Test(.timeLimit(.minutes(2))) func aSlowClientDelaysNoScrape() throws {
        let daemon = try ServiceDaemon(["--metrics-address", "127.0.0.1:0"])
        let port = try Self.port(of: daemon)
        // Kept at a high number: a stray close of a low, recently freed number by another test of this process must
        // not end the trickler's connection from our side (the daemon would see an end of file, not a deadline).
        let connected = try connect(port: port)
        let slow = fcntl(connected, F_DUPFD_CLOEXEC, 900)
        close(connected)
        #expect(slow >= 900)
        defer { close(slow) }
        let started = Date()
        let trickler = runInBackgroundThread {
            // One byte a second for up to 20 s, until the daemon hangs up.
            for byte in Array("GET /metrics HTTP/1.1\r\nHost: x\r\n".utf8) {
                if send(slow, [byte], 1, Int32(MSG_NOSIGNAL)) != 1 {
                    let error = errno
                    print("aSlowClientDelaysNoScrape: send failed after \(Date().timeIntervalSince(started)) s: errno \(error)")
                    return Date().timeIntervalSince(started)
                }
                var entry = pollfd(fd: slow, events: Int16(POLLIN), revents: 0)
                if poll(&entry, 1, 1000) > 0 { return Date().timeIntervalSince(started) }
            }
            return Date().timeIntervalSince(started)
        }
        let body = try scrape(port: port, path: "/metrics")
        let scraped = Date().timeIntervalSince(started)
        #expect(body.hasPrefix("HTTP/1.1 200 OK"))
        #expect(scraped < 4, "the scrape waited \(scraped) s behind the slow client")
        let cutOff = trickler()
        #expect(cutOff < 15, "the slow client was held \(cutOff) s")
        #expect(daemon.waitForLog("metrics request deadline passed"), "\(daemon.process.stderr)")
    }

    /// Per-job series tell every user's job ids and progress to whoever reaches the port: off unless the operator
    /// asks (--metrics-per-job); the totals are always there. And the endpoint binds loopback unless told otherwise.
    @Test(.timeLimit(.minutes(2))) func perJobSeriesOnlyWhenTheOperatorOptsIn() throws {
        let memory = try MemoryFixture(bytes: 1 << 20)
        for perJob in [false, true] {
            // A bare port binds loopback (the documented default).
            let daemon = try ServiceDaemon(["--metrics-address", "0"] + (perJob ? ["--metrics-per-job"] : []))
            #expect(daemon.readyMessage.contains("metrics on 127.0.0.1:"), "\(daemon.readyMessage)")
            let id = try daemon.add(["firecracker", "--socket", memory.socket("vm-\(perJob)"), "--mem-file", memory.memoryFile])
            let body = try scrape(port: try Self.port(of: daemon), path: "/metrics")
            #expect(body.contains("\nlazy_pages_jobs{state=\"listening\"} 1"), "\(body)")
            #expect(body.contains("lazy_pages_job_pages_expected{job=\"\(id)\"}") == perJob, "\(body)")
            #expect(body.contains("job=\"") == perJob)
            #expect(try daemon.cli(["cancel", id]).exitCode == 0)
        }
    }

    private func connect(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw Emulator.Failure(description: "connect: errno \(errno)")
        }
        return fd
    }

    private func scrape(port: UInt16, path: String) throws -> String {
        let fd = try connect(port: port)
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            response += chunk[..<n]
        }
        return String(decoding: response, as: UTF8.self)
    }
}

/// Runs `body` on its own thread; the returned closure waits for its result.
func runInBackgroundThread<T>(_ body: @escaping @Sendable () -> T) -> () -> T {
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var result: T?
    Thread {
        result = body()
        done.signal()
    }.start()
    return {
        done.wait()
        return result!
    }
}
