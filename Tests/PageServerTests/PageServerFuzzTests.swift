import CRIUImages
import Foundation
import LinuxSupport
import PageServer
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Seeded fuzzers over CRIU's page-server protocol, both ways.
///
/// Server side: random and mutated request streams (GETs for known, unknown, unaligned and out-of-range addresses,
/// wrong and truncated pids, huge and zero `nr_pages`, flags in `cmd`, CLOSE, FORCE_CLOSE, unknown commands,
/// byte-level mutations, truncated headers) sent over many connections to a real `lazy-pages page-server` process,
/// with early hang-ups (before, during and after the replies) and idle half-sent connections piling up. Each
/// answered stream must be exactly the bytes the protocol prescribes (reply headers and page data from the images)
/// up to the point where the server ends the connection; a well-behaved client fetches and checks pages alongside
/// the whole time, and a real restore through the server passes at the end.
///
/// Client side: a generated lying server (wrong address, wrong pid, wrong command, missing PE_PRESENT, oversized or
/// zero `nr_pages`, replies cut short, garbage, duplicated or reordered replies, trailing bytes, hang-ups, stalls)
/// behind real restores. Each restore must either complete with every byte verified by its processes or fail with
/// an error naming the server; a process must never read a wrong byte. (Page *data* that is garbled under a correct
/// header cannot be detected by this protocol: it carries no checksums. Those lies are not generated.)
@Suite(.serialized) struct PageServerFuzzTests {
    // MARK: Server side

    /// The bytes a correct server sends for `stream` before it ends the connection (the client having shut down
    /// its sending side after the stream).
    static func expectedReplies(_ stream: [UInt8], _ truth: ServedImages) -> [UInt8] {
        var out: [UInt8] = []
        var offset = 0
        while offset + PageServerMessage.size <= stream.count {
            let message = PageServerMessage(decoding: Array(stream[offset..<offset + PageServerMessage.size]))
            offset += PageServerMessage.size
            switch message.command {
            case PageServerCommand.get:
                let found = truth.locate(pid: Int32(truncatingIfNeeded: message.destination), address: message.address,
                                         maxPages: min(message.pageCount, PageServerLimits().maxReplyPages))
                let count = found?.pageCount ?? 0
                out += PageServerMessage.pages(answering: message, pageCount: count).bytes
                // An unknown address is answered, then the connection is closed (probing costs a connection).
                guard count > 0 else { return out }
                if let found {
                    var data = [UInt8](repeating: 0, count: Int(count) * basePageSize)
                    _ = data.withUnsafeMutableBytes { pread(found.descriptor, $0.baseAddress, $0.count, off_t(found.offset)) }
                    out += data
                }
            case PageServerCommand.close:
                out += [0, 0, 0, 0]
            case PageServerCommand.forceClose:
                return out + [0, 0, 0, 0]
            default:
                return out
            }
        }
        return out
    }

    static func requestStream(_ rng: inout FuzzRandom, _ truth: ServedImages) -> ([UInt8], String) {
        let pids = truth.runs.keys.sorted()
        var stream: [UInt8] = []
        var how: [String] = []
        for _ in 0..<(1 + rng.below(12)) {
            let pid = rng.pick(pids)
            let run = rng.pick(truth.runs[pid]!)
            var message = PageServerMessage.get(
                pid: pid, address: run.address + UInt64(rng.below(run.pageCount)) * UInt64(basePageSize),
                pageCount: rng.pick([1, 1, 2, 7, 16]))
            switch rng.below(16) {
            case 0: message.address += UInt64(1 + rng.below(4095))
            case 1: message.address = rng.pick([0, UInt64.max, UInt64.max - 4095, 1 << 47, run.address - 4096, run.end])
            case 2: message.destination = rng.pick([0, 3, 0xffff_ffff, 1 << 32 | UInt64(pid), UInt64.max])
            case 3: message.pageCount = rng.pick([0, 1 << 32, UInt64.max, 1 << 63, UInt64(run.pageCount + 1)])
            case 4: message.cmd |= UInt32(1 + rng.below(0xffff)) << 16
            case 5: message.cmd = PageServerCommand.close
            case 6: message.cmd = PageServerCommand.forceClose
            case 7: message.cmd = rng.pick([0, PageServerCommand.add, PageServerCommand.hole, PageServerCommand.open,
                                            PageServerCommand.open2, PageServerCommand.parent, PageServerCommand.addWithFlags,
                                            0xffff, UInt32(truncatingIfNeeded: rng.next())])
            default: break
            }
            how.append("\(message)")
            stream += message.bytes
        }
        if rng.oneIn(4) {
            let (mutated, what) = ByteMutator.mutate(stream, &rng)
            stream = mutated
            how.append(what)
        }
        return (stream, how.joined(separator: "; "))
    }

    /// Reads until end of file (or `timeout` seconds: then nil).
    static func readToEnd(_ fd: Int32, timeout: Double, limit: Int = 64 << 20) -> [UInt8]? {
        var out: [UInt8] = []
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while out.count < limit {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(max(1, seconds(left) * 1000)))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return nil }
            let n = chunk.withUnsafeMutableBytes { raw in
                retryingOnInterrupt { recv(fd, raw.baseAddress, raw.count, 0) }
            }
            if n <= 0 { return out }
            out += chunk[..<n]
        }
        return out
    }

    final class Fetcher: @unchecked Sendable {
        private let lock = NSLock()
        private var stopping = false
        private(set) var pagesVerified = 0
        private(set) var problems: [String] = []
        private let done = DispatchSemaphore(value: 0)

        /// A client that asks for known pages over one connection and checks every byte, until `stop()`.
        func start(port: UInt16, truth: ServedImages, seed: UInt64) {
            Thread { [self] in
                defer { done.signal() }
                var rng = FuzzRandom(seed: seed)
                guard let fd = try? Wire.connect(port: port) else {
                    lock.withLock { problems.append("cannot connect") }
                    return
                }
                defer { close(fd) }
                while !lock.withLock({ stopping }) {
                    let pid = rng.pick(truth.runs.keys.sorted())
                    let run = rng.pick(truth.runs[pid]!)
                    let first = rng.below(run.pageCount)
                    let count = 1 + rng.below(min(16, run.pageCount - first))
                    let request = PageServerMessage.get(pid: pid, address: run.address + UInt64(first * basePageSize), pageCount: count)
                    let expected = PageServerFuzzTests.expectedReplies(request.bytes, truth)
                    guard Wire.send(fd, request.bytes) else {
                        lock.withLock { problems.append("send failed") }
                        return
                    }
                    let got = Wire.receive(fd, expected.count)
                    if got != expected {
                        lock.withLock { problems.append("\(request): \(got.count) bytes, not the \(expected.count) expected") }
                        return
                    }
                    lock.withLock { pagesVerified += count }
                }
            }.start()
        }

        func stop() -> (Int, [String]) {
            lock.withLock { stopping = true }
            done.wait()
            return lock.withLock { (pagesVerified, problems) }
        }
    }

    struct ServerTally: CustomStringConvertible {
        var inputs = 0, crashes = 0, hangs = 0, wrongReplies = 0, checked = 0, hungUpEarly = 0, idle = 0
        var replyBytes = 0
        var description: String {
            "inputs \(inputs), crashes \(crashes), hangs \(hangs), wrong replies \(wrongReplies) (of \(checked) streams "
                + "checked byte for byte, \(replyBytes) bytes), early hang-ups \(hungUpEarly), idle connections \(idle)"
        }
    }

    @Test(.timeLimit(.minutes(20))) func fuzzedRequestStreamsGetExactRepliesFromLazyPagesPageServer() async throws { try await oneHeavyTestAtATime {
        signal(SIGPIPE, SIG_IGN)
        let budget = FuzzBudget(seconds: 12, inputs: 20_000)
        var rng = FuzzRandom(seed: budget.seed)
        let images = try RemoteImages()
        let truth = try ServedImages(directory: images.serverDirectory)
        let logs = try makeTemporaryDirectory()
        let server = try DaemonProcess(
            try BuiltProducts.path(of: "lazy-pages"),
            ["page-server", "-D", images.serverDirectory, "--address", "127.0.0.1", "--port", "0"],
            environment: [], directory: logs)
        var port: UInt16 = 0
        for _ in 0..<3000 where port == 0 {
            // Waiting for a file to say something: a safety-bounded poll (30 s), not synchronisation of the test.
            if let line = server.stdout.split(separator: "\n").first(where: { $0.hasPrefix("page-server: listening on port ") }) {
                port = UInt16(line.split(separator: " ").last!) ?? 0
            } else {
                usleep(10_000)
            }
        }
        try #require(port != 0, "the page server never said its port: \(server.stderr)")

        let fetcher = Fetcher()
        fetcher.start(port: port, truth: truth, seed: budget.seed ^ 0xfe7c4)
        var tally = ServerTally()
        var failures: [String] = []
        var idle: [Int32] = []
        while budget.allows(tally.inputs) {
            tally.inputs += 1
            let (stream, how) = Self.requestStream(&rng, truth)
            guard let fd = try? Wire.connect(port: port) else {
                tally.crashes += 1
                failures.append("cannot connect: errno \(errno)")
                break
            }
            switch rng.below(20) {
            case 0:
                // Half a header, then leave the connection open: the server keeps a thread waiting on it.
                _ = Wire.send(fd, Array(stream.prefix(1 + rng.below(31))))
                idle.append(fd)
                tally.idle += 1
                if idle.count >= 64 {
                    idle.forEach { close($0) }
                    idle.removeAll()
                }
                continue
            case 1:
                // Hang up right after asking (the server's replies meet a closed socket).
                _ = Wire.send(fd, stream)
                close(fd)
                tally.hungUpEarly += 1
                continue
            case 2:
                // Read part of the answer, then hang up. (Our side is shut first: a stream without CLOSE leaves the
                // server waiting for more, and a read for more than it answered would wait for the receive timeout.)
                _ = Wire.send(fd, stream)
                shutdown(fd, Int32(SHUT_WR))
                _ = Wire.receive(fd, rng.below(40_000))
                close(fd)
                tally.hungUpEarly += 1
                continue
            default:
                break
            }
            _ = Wire.send(fd, stream)
            shutdown(fd, Int32(SHUT_WR))
            let expected = Self.expectedReplies(stream, truth)
            let got = Self.readToEnd(fd, timeout: 20)
            close(fd)
            guard let got else {
                tally.hangs += 1
                if failures.count < 10 { failures.append("\(how): no end of the replies in 20 s") }
                continue
            }
            tally.checked += 1
            tally.replyBytes += got.count
            if got != expected {
                tally.wrongReplies += 1
                let at = Array(zip(got, expected)).firstIndex { $0.0 != $0.1 } ?? min(got.count, expected.count)
                if failures.count < 10 {
                    failures.append("\(how): \(got.count) bytes, expected \(expected.count), first difference at \(at)")
                }
            }
        }
        idle.forEach { close($0) }
        let (pagesVerified, fetchProblems) = fetcher.stop()
        // A real restore through the fuzzed server.
        let restore = try remoteRestore(images, port: port, scenario: "verify")
        let alive = kill(server.pid, 0) == 0
        kill(server.pid, SIGTERM)
        let status = server.wait()
        print("page server fuzzer (lazy-pages page-server): \(tally); the client alongside verified \(pagesVerified) pages, "
              + "\(fetchProblems.count) problems; restore after: \(restore.outcome); server exit \(status)")
        #expect(alive && status == -SIGTERM, "the page server died: \(status) \(server.stderr.suffix(3000))")
        #expect(fetchProblems.isEmpty && pagesVerified > 0, "\(fetchProblems)")
        #expect(restore.outcome == .completed && restore.report.allPassed, "\(describe(restore.report))")
        #expect(tally.inputs >= 100, "too few inputs in the time allowed: \(tally)")
        #expect(tally.crashes == 0 && tally.hangs == 0 && tally.wrongReplies == 0, "\(tally)\n\(failures.joined(separator: "\n"))")
    }}

    // MARK: Client side

    enum Lie: String, CaseIterable {
        case wrongAddress, wrongPid, wrongCommand, noPresentFlag, oversized, zeroPages, cutShort, garbage, duplicated,
             reordered, trailingBytes, hangUp, stall
    }

    /// A page server that answers honestly or lies, as the plan says; one thread per connection.
    final class LyingServer: @unchecked Sendable {
        let listener: Int32
        let port: UInt16
        private let truth: ServedImages
        private let lock = NSLock()
        private var rng: FuzzRandom
        private let lies: [Lie]
        private let lieIn: Int
        private var connections: [Int32] = []
        private(set) var told: [Lie: Int] = [:]
        private(set) var honest = 0

        init(truth: ServedImages, seed: UInt64, lies: [Lie], lieIn: Int) throws {
            listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
            port = TCPSocket.localPort(listener)
            self.truth = truth
            rng = FuzzRandom(seed: seed)
            self.lies = lies
            self.lieIn = lieIn
            Thread.detachNewThread { [self] in acceptLoop() }
        }

        private func acceptLoop() {
            while true {
                let fd = accept(listener, nil, nil)
                if fd < 0 { return }
                lock.withLock { connections.append(fd) }
                Thread.detachNewThread { [self] in serve(fd) }
            }
        }

        private func serve(_ fd: Int32) {
            var previous: [UInt8]?
            while true {
                let received = Wire.receive(fd, PageServerMessage.size)
                guard received.count == PageServerMessage.size else { return }
                let request = PageServerMessage(decoding: received)
                if request.command == PageServerCommand.close || request.command == PageServerCommand.forceClose {
                    _ = Wire.send(fd, [0, 0, 0, 0])
                    continue
                }
                var reply = PageServerFuzzTests.expectedReplies(request.bytes, truth)
                let (lie, choice, extra): (Lie?, Int, [UInt8]) = lock.withLock {
                    let lie: Lie? = rng.oneIn(lieIn) ? rng.pick(lies) : nil
                    if let lie { told[lie, default: 0] += 1 } else { honest += 1 }
                    return (lie, rng.below(1 << 20), rng.bytes(1 + rng.below(64)))
                }
                var header = PageServerMessage(decoding: Array(reply.prefix(PageServerMessage.size)))
                let data = Array(reply.dropFirst(PageServerMessage.size))
                func rebuilt(_ h: PageServerMessage, _ d: [UInt8]) -> [UInt8] { h.bytes + d }
                switch lie {
                case nil:
                    // Honest, sometimes as an old server (PS_IOV_ADD) or with fewer pages than asked.
                    if choice % 5 == 0 { header.cmd = PageServerCommand.add }
                    if choice % 7 == 0 && header.pageCount > 1 {
                        header.pageCount -= 1
                        reply = rebuilt(header, Array(data.prefix(Int(header.pageCount) * basePageSize)))
                    } else {
                        reply = rebuilt(header, data)
                    }
                case .wrongAddress:
                    header.address = choice % 2 == 0 ? header.address &+ UInt64(basePageSize) : header.address ^ UInt64(choice << 12)
                    reply = rebuilt(header, data)
                case .wrongPid:
                    header.destination &+= UInt64(1 + choice % 3)
                    reply = rebuilt(header, data)
                case .wrongCommand:
                    header.cmd = [0, PageServerCommand.get, PageServerCommand.hole, 0x4242, PageServerCommand.close][choice % 5]
                    reply = rebuilt(header, data)
                case .noPresentFlag:
                    header.cmd = PageServerCommand.addWithFlags | PageServerFlags.lazy << 16
                    reply = rebuilt(header, data)
                case .oversized:
                    header.pageCount += UInt64(1 + choice % 4)
                    reply = rebuilt(header, data + [UInt8](repeating: 0, count: Int(header.pageCount) * basePageSize - data.count))
                case .zeroPages:
                    header.pageCount = 0
                    reply = rebuilt(header, [])
                case .cutShort:
                    reply = Array(reply.prefix(choice % max(reply.count, 1)))
                    _ = Wire.send(fd, reply)
                    shutdown(fd, Int32(SHUT_RDWR))
                    return
                case .garbage:
                    reply = extra + reply
                case .duplicated:
                    reply = reply + reply
                case .reordered:
                    if let earlier = previous {
                        previous = reply
                        reply = earlier
                    }
                case .trailingBytes:
                    reply = reply + extra
                case .hangUp:
                    shutdown(fd, Int32(SHUT_RDWR))
                    return
                case .stall:
                    continue
                }
                if lie != .reordered { previous = reply }
                guard Wire.send(fd, reply) else { return }
            }
        }

        func stop() {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
            lock.withLock { for fd in connections { shutdown(fd, Int32(SHUT_RDWR)) } }
        }

        var tally: ([Lie: Int], Int) { lock.withLock { (told, honest) } }
    }

    struct ClientTally: CustomStringConvertible {
        var inputs = 0, crashes = 0, hangs = 0, wrongPages = 0, completed = 0, failedClearly = 0, unclear = 0
        var liesTold = 0, honestReplies = 0
        var description: String {
            "inputs \(inputs) (restores behind a lying server, \(liesTold) lies and \(honestReplies) honest replies), "
                + "crashes \(crashes), hangs \(hangs), wrong pages \(wrongPages), completed with every byte checked "
                + "\(completed), failed naming the server \(failedClearly), unclear \(unclear)"
        }
    }

    @Test(.timeLimit(.minutes(20))) func aLyingServerIsAnErrorOrSurvivedNeverAWrongPage() async throws { try await oneHeavyTestAtATime {
        signal(SIGPIPE, SIG_IGN)
        // The restored processes die of SIGBUS when the restore fails: Swift's crash backtracer (linked into every
        // SwiftPM executable, lp-workload included, and switched on by `swift test`'s environment) can then spend
        // 30 s and more failing to suspend the other 16 threads of the `threads` scenario. Let them die at once.
        setenv("SWIFT_BACKTRACE", "enable=no", 1)
        let budget = FuzzBudget(seconds: 12, inputs: 2_000)
        var rng = FuzzRandom(seed: budget.seed ^ 0x11e)
        let images = try RemoteImages()
        let truth = try ServedImages(directory: images.serverDirectory)
        var tally = ClientTally()
        var failures: [String] = []
        while budget.allows(tally.inputs) {
            tally.inputs += 1
            var lies = Lie.allCases.filter { $0 != .stall }
            if rng.oneIn(10) { lies.append(.stall) }
            let chosen = (0...rng.below(3)).map { _ in rng.pick(lies) }
            let lieIn = rng.pick([1, 2, 5, 20, 100])
            let liar = try LyingServer(truth: truth, seed: rng.next(), lies: chosen, lieIn: lieIn)
            let began = ContinuousClock.now
            let result = try remoteRestore(images, port: liar.port, scenario: rng.pick(["verify", "verify", "threads"]),
                                           seed: rng.next() % 1000, configure: {
                $0.stallTimeout = 0.3
                $0.retries = 2
                $0.retryDelay = 0.01
            }, timeout: .seconds(30))
            let took = ContinuousClock.now - began
            liar.stop()
            let (told, honest) = liar.tally
            tally.liesTold += told.values.reduce(0, +)
            tally.honestReplies += honest
            let what = "lies \(chosen.map(\.rawValue)) one in \(lieIn)"
            if ProcessInfo.processInfo.environment["LP_FUZZ_VERBOSE"] != nil { print("\(what): \(took) \(result.outcome)") }
            if took > .seconds(20) {
                // Normal inputs end in well under a second; this one waited for a timeout somewhere.
                tally.hangs += 1
                if failures.count < 10 { failures.append("\(what): took \(took): \(result.outcome)\n\(describe(result.report))") }
            }
            let wrong = result.report.tasks.flatMap(\.output).filter { $0.hasPrefix("FAIL") && $0.contains("byte=") }
            tally.wrongPages += wrong.count
            if !wrong.isEmpty && failures.count < 10 { failures.append("\(what): \(wrong.prefix(3))") }
            switch result.outcome {
            case .completed:
                if result.report.allPassed {
                    tally.completed += 1
                } else {
                    tally.unclear += 1
                    if failures.count < 10 { failures.append("\(what): completed, but \(describe(result.report))") }
                }
            case .failed(let reason), .cancelled(let reason):
                if took > .seconds(20) {
                    break
                } else if reason.contains("127.0.0.1:\(liar.port)") {
                    tally.failedClearly += 1
                } else {
                    tally.unclear += 1
                    if failures.count < 10 { failures.append("\(what): \(reason)") }
                }
            }
        }
        print("page server client fuzzer (lying server): \(tally)")
        #expect(tally.inputs >= 5, "too few inputs in the time allowed: \(tally)")
        #expect(tally.hangs == 0 && tally.wrongPages == 0 && tally.unclear == 0, "\(tally)\n\(failures.joined(separator: "\n"))")
        #expect(tally.completed > 0 && tally.failedClearly > 0, "the generator should both break and spare restores: \(tally)")
    }}
}
