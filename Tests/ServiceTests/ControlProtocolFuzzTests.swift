import Foundation
import LazyPagesControl
import LinuxSupport
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A seeded fuzzer over the control protocol of a real `lazy-pagesd serve`: generated requests (every op, wrong and
/// missing versions, wrong types, unknown fields, odd ids and timeouts, job specs with relative, missing, overlong,
/// non-socket and directory paths, out-of-range options), byte-mutated requests, and framing abuse (oversized
/// lines, many requests in one write, one-byte writes, blank lines, NUL and invalid UTF-8, deep nesting, hang-ups in
/// the middle of a line or before the reply, descriptors passed along with a line) over a pool of connections.
///
/// Every complete line must get exactly one reply line within 20 s (an `add` naming an unreachable page server
/// legitimately takes seconds: the client retries with backoff) that decodes as a `ControlReply` and is either
/// `ok` or names a documented code with a message; an oversized line gets `too-large` and the connection closes.
/// Jobs the fuzzer manages to add are cancelled at once. Meanwhile a Firecracker job (fc-emulator, every byte
/// checked) and a CRIU job (restore-sim, every byte checked) run to completion, a decoy file given as a socket path
/// must survive, and the daemon must still answer and shut down cleanly (exit 0) at the end.
@Suite(.serialized) struct ControlProtocolFuzzTests {
    struct Input {
        var bytes: [UInt8]
        var how: String
        /// Written in pieces of this many bytes (nil: one write).
        var pieces: Int? = nil
        /// Hang up after writing, without reading the replies.
        var hangUp = false
        /// Pass a descriptor with the first write.
        var descriptor = false
    }

    final class Paths {
        let directory: String
        let memoryFile: String
        let images: String
        let decoy: String
        var counter = 0
        init(directory: String, memoryFile: String, images: String) throws {
            self.directory = directory
            self.memoryFile = memoryFile
            self.images = images
            decoy = directory + "/decoy"
            guard FileManager.default.createFile(atPath: decoy, contents: Data("keep me".utf8)) else {
                throw Emulator.Failure(description: "cannot write \(decoy)")
            }
        }
        func freshSocket() -> String {
            counter += 1
            return directory + "/fuzz-\(counter).sock"
        }
    }

    // MARK: Generation

    static func jsonString(_ s: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    static func job(_ rng: inout FuzzRandom, _ paths: Paths) -> String {
        let anyPath = [
            paths.memoryFile, paths.images, paths.directory, paths.decoy, "/nonexistent/x", "relative/path", "", "/",
            "/" + String(repeating: "a", count: 300), paths.directory + "/" + String(repeating: "b", count: 200),
            "/dev/zero", "/proc/self/mem", paths.directory + "/nul\u{0}byte", paths.freshSocket(),
        ]
        var fields: [String: String] = [:]
        switch rng.below(3) {
        case 0:
            fields["frontEnd"] = "\"firecracker\""
            fields["socketPath"] = jsonString(rng.oneIn(2) ? paths.freshSocket() : rng.pick(anyPath))
            fields["memoryFile"] = jsonString(rng.oneIn(2) ? paths.memoryFile : rng.pick(anyPath))
        case 1:
            fields["frontEnd"] = "\"criu\""
            fields["imagesDirectory"] = jsonString(rng.oneIn(3) ? paths.images : rng.pick(anyPath))
            if rng.oneIn(2) { fields["workDirectory"] = jsonString(rng.pick(anyPath)) }
            if rng.oneIn(40) {
                // Rare: an unreachable page server makes `add` retry with backoff for seconds before refusing.
                fields["pageServer"] = "{\"address\":\(rng.pick(["\"127.0.0.1\"", "\"::1\"", "\"\"", "\"no host\"", "1", "null"])),"
                    + "\"port\":\(rng.pick(["1", "0", "65535", "65536", "-1", "\"80\"", "null"]))}"
            }
        default:
            fields["frontEnd"] = rng.pick(["\"xen\"", "1", "null", "\"\"", "\"CRIU\"", "{}", "[\"criu\"]"])
            fields[rng.pick(["socketPath", "imagesDirectory", "memoryFile"])] = jsonString(rng.pick(anyPath))
        }
        let options: [(String, [String])] = [
            ("backgroundFill", ["true", "false", "\"yes\"", "1", "null"]),
            ("faultAround", ["0", "1", "512", "513", "-1", "9223372036854775807", "9223372036854775808", "1.5", "\"4\""]),
            ("fillChunk", ["0", "1", "4096", "4097", "-64", "1e9"]),
            ("name", ["\"\"", jsonString(String(repeating: "n", count: 129)), jsonString("é\u{1F600}\u{0}"), "7"]),
            ("unknownOption", ["1", "{\"nested\":[1,2,3]}"]),
        ]
        for (key, values) in options where rng.oneIn(4) { fields[key] = rng.pick(values) }
        return "{" + rng.shuffled(fields.keys.sorted()).map { "\"\($0)\":\(fields[$0]!)" }.joined(separator: ",") + "}"
    }

    static func request(_ rng: inout FuzzRandom, _ paths: Paths) -> String {
        var fields: [String: String] = [:]
        fields["version"] = rng.below(4) > 0 ? "1" : rng.pick(["0", "2", "-1", "\"1\"", "1.0", "1.5", "null", "true",
                                                                "99999999999999999999", "[1]"])
        if rng.oneIn(20) { fields["version"] = nil }
        let op = rng.below(5) > 0 ? rng.pick(["add", "list", "status", "wait", "cancel"]) : rng.pick(["explode", "", "ADD", "List"])
        fields["op"] = rng.oneIn(20) ? rng.pick(["7", "null", "[\"list\"]"]) : "\"\(op)\""
        if rng.oneIn(30) { fields["op"] = nil }
        if op == "add" || rng.oneIn(10) { fields["job"] = rng.oneIn(10) ? rng.pick(["null", "1", "[]", "\"job\""]) : job(&rng, paths) }
        if ["status", "wait", "cancel"].contains(op) || rng.oneIn(10) {
            // Never the ids of the jobs run alongside (1 and 2): those are checked at the end.
            fields["id"] = rng.pick(["\"0\"", "\"999999\"", "\"-1\"", "\"\"", "\"abc\"", "5", "null", "\"1e3\"",
                                     jsonString(String(repeating: "9", count: 1000)), "\"\\u0000\""])
            if op == "status" && rng.oneIn(3) { fields["id"] = nil }
        }
        if op == "wait" || rng.oneIn(10) {
            fields["timeoutSeconds"] = rng.pick(["0", "0.01", "-1", "1e308", "\"x\"", "null", "-0", "1e-300"])
        }
        if rng.oneIn(6) { fields[rng.pick(["extra", "Version", "op ", ""])] = rng.pick(["1", "\"x\"", "{}", "[null]"]) }
        if rng.oneIn(20), !fields.isEmpty {
            let key = rng.pick(fields.keys.sorted())
            // A duplicate key, second value different.
            return "{" + fields.keys.sorted().map { "\"\($0)\":\(fields[$0]!)" }.joined(separator: ",") + ",\"\(key)\":\"dup\"}"
        }
        return "{" + rng.shuffled(fields.keys.sorted()).map { "\"\($0)\":\(fields[$0]!)" }.joined(separator: ",") + "}"
    }

    static func generate(_ rng: inout FuzzRandom, _ paths: Paths) -> Input {
        var input: Input
        switch rng.below(10) {
        case 0...4:
            input = Input(bytes: Array(request(&rng, paths).utf8) + [0x0a], how: "generated")
        case 5...7:
            var bytes = Array(request(&rng, paths).utf8)
            var how: [String] = []
            for _ in 0...rng.below(3) {
                let (mutated, what) = ByteMutator.mutate(bytes, &rng)
                bytes = mutated
                how.append(what)
            }
            input = Input(bytes: bytes + [0x0a], how: "mutated: " + how.joined(separator: ", "))
        default:
            input = special(&rng, paths)
        }
        if input.pieces == nil && rng.oneIn(10) { input.pieces = 1 + rng.below(8) }
        if rng.oneIn(15) { input.descriptor = true }
        if rng.oneIn(25) { input.hangUp = true }
        input.how = String(String(decoding: input.bytes.prefix(160), as: UTF8.self).debugDescription) + " (\(input.how))"
        return input
    }

    static func special(_ rng: inout FuzzRandom, _ paths: Paths) -> Input {
        let list = Array("{\"version\":1,\"op\":\"list\"}".utf8)
        switch rng.below(10) {
        case 0:
            let n = 2 + rng.below(40)
            var bytes: [UInt8] = []
            for _ in 0..<n { bytes += Array(request(&rng, paths).utf8) + [0x0a] }
            return Input(bytes: bytes, how: "\(n) requests in one write")
        case 1:
            return Input(bytes: Array("\n \n\r\n   \n".utf8) + list + [0x0a], how: "blank lines, then list")
        case 2:
            return Input(bytes: list + [0x0a], how: "list in one-byte writes", pieces: 1)
        case 3:
            return Input(bytes: Array("{\"version\":1,\"op\":\"list\",\"pad\":\"".utf8)
                         + [UInt8](repeating: 0x78, count: ControlProtocol.maxMessageBytes + rng.below(4096)) + Array("\"}\n".utf8),
                         how: "oversized line")
        case 4:
            let pad = (ControlProtocol.maxMessageBytes - 200) - rng.below(16384)
            return Input(bytes: Array("{\"version\":1,\"op\":\"list\",\"pad\":\"".utf8)
                         + [UInt8](repeating: 0x78, count: pad) + Array("\"}\n".utf8), how: "a line just under the limit")
        case 5:
            let depth = rng.pick([100, 600, 5000, 30000])
            return Input(bytes: Array("{\"version\":1,\"op\":\"list\",\"x\":".utf8) + [UInt8](repeating: 0x5b, count: depth)
                         + [UInt8](repeating: 0x5d, count: depth) + Array("}\n".utf8), how: "nesting \(depth) deep")
        case 6:
            return Input(bytes: list.prefix(5 + rng.below(15)) + [], how: "half a line, then hang up", hangUp: true)
        case 7:
            return Input(bytes: [0xff, 0xfe, 0x00, 0x7b, 0x0a] + list + [0x0a], how: "invalid UTF-8 line, then list")
        case 8:
            return Input(bytes: rng.bytes(1 + rng.below(600)) + [0x0a], how: "random bytes")
        default:
            return Input(bytes: Array("[\(String(decoding: list, as: UTF8.self))]\n".utf8) + Array("1\n\"x\"\nnull\n{}\n[]\n".utf8),
                         how: "not objects")
        }
    }

    // MARK: The connection

    final class Connection {
        let fd: Int32
        var buffered: [UInt8] = []
        init(path: String) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard connected == 0 else {
                close(fd)
                throw Emulator.Failure(description: "connect \(path): errno \(errno)")
            }
        }
        deinit { close(fd) }

        /// False when the daemon hung up before taking everything (fine after an oversized line).
        func write(_ bytes: [UInt8], pieces: Int?, descriptor: Bool) -> Bool {
            var offset = 0
            var first = true
            while offset < bytes.count {
                let n = min(pieces ?? bytes.count, bytes.count - offset)
                if first && descriptor {
                    let extra = open("/dev/null", O_RDONLY | O_CLOEXEC)
                    defer { close(extra) }
                    do {
                        try sendWithDescriptor(Array(bytes[offset..<offset + n]), extra)
                    } catch { return false }
                    offset += n
                } else {
                    let sent = bytes[offset..<offset + n].withUnsafeBytes { raw in
                        retryingOnInterrupt { send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                    }
                    if sent < 0 && errno == EAGAIN {
                        // Many short lines: the daemon's replies fill our receive buffer while we still write, and it
                        // stops reading until we read them. Take the replies in while waiting for room.
                        guard takeRepliesWhileBlocked() else { return false }
                        continue
                    }
                    guard sent > 0 else { return false }
                    offset += sent
                }
                first = false
            }
            return true
        }

        /// Waits (at most 20 s) until the socket takes more bytes, reading whatever replies arrive meanwhile into
        /// `buffered`. False on end of file, error or timeout.
        private func takeRepliesWhileBlocked() -> Bool {
            var entry = pollfd(fd: fd, events: Int16(POLLIN | POLLOUT), revents: 0)
            let ready = poll(&entry, 1, 20_000)
            if ready < 0 && errno == EINTR { return true }
            guard ready > 0 else { return false }
            if entry.revents & Int16(POLLIN) != 0 {
                var chunk = [UInt8](repeating: 0, count: 65536)
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n > 0 { buffered += chunk[..<n] } else if n == 0 || errno != EAGAIN { return false }
            }
            return entry.revents & Int16(POLLERR | POLLHUP) == 0 || entry.revents & Int16(POLLIN) != 0
        }

        private func sendWithDescriptor(_ bytes: [UInt8], _ extra: Int32) throws {
            try DescriptorPassing.send(socket: fd, bytes: bytes, descriptors: [extra])
        }

        /// The next reply line, or nil at end of file or after `timeout` seconds.
        func readLine(timeout: Double) -> [UInt8]? {
            let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
            while true {
                if let newline = buffered.firstIndex(of: 0x0a) {
                    let line = Array(buffered[..<newline])
                    buffered.removeSubrange(...newline)
                    return line
                }
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return nil }
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&entry, 1, Int32(max(1, seconds(left) * 1000)))
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else { return nil }
                var chunk = [UInt8](repeating: 0, count: 65536)
                let n = chunk.withUnsafeMutableBytes { raw in
                    retryingOnInterrupt { recv(fd, raw.baseAddress, raw.count, 0) }
                }
                guard n > 0 else { return nil }
                buffered += chunk[..<n]
            }
        }
    }

    /// The lines of `bytes` the daemon answers (complete, not blank), and whether one of them is oversized.
    static func framing(_ bytes: [UInt8]) -> (lines: Int, oversized: Bool) {
        var lines = 0
        var current = 0
        for byte in bytes {
            if byte == 0x0a {
                if current >= ControlProtocol.maxMessageBytes { return (lines, true) }
                lines += 1
                current = 0
            } else {
                current += 1
            }
        }
        // Blank lines (spaces and carriage returns only) get no reply.
        let blank = bytes.split(separator: 0x0a, omittingEmptySubsequences: false).dropLast()
            .filter { $0.allSatisfy { $0 == 0x20 || $0 == 0x0d } }.count
        return (lines - blank, current >= ControlProtocol.maxMessageBytes)
    }

    struct Tally: CustomStringConvertible {
        var inputs = 0, lines = 0, crashes = 0, hangs = 0, badReplies = 0, jobsAdded = 0, jobsCancelled = 0
        var ok = 0
        var slowest = 0.0
        var codes: [String: Int] = [:]
        var description: String {
            "inputs \(inputs) (\(lines) request lines), crashes \(crashes), hangs \(hangs), bad replies \(badReplies), "
                + "ok \(ok), refused \(codes.values.reduce(0, +)) \(codes.sorted { $0.key < $1.key }), "
                + "jobs added \(jobsAdded) (cancelled \(jobsCancelled)), slowest reply \(String(format: "%.3f", slowest)) s"
        }
    }

    @Test(.timeLimit(.minutes(20))) func fuzzedRequestsAreAnsweredWhileJobsRunAlongside() async throws { try await oneHeavyTestAtATime {
        let budget = FuzzBudget(seconds: 15, inputs: 20_000)
        var rng = FuzzRandom(seed: budget.seed)
        let daemon = try ServiceDaemon(["--shutdown-timeout", "10"])
        let images = try ImageFixture()
        let memory = try MemoryFixture(bytes: 2 << 20)
        let paths = try Paths(directory: memory.directory, memoryFile: memory.memoryFile, images: images.images)

        // The jobs run alongside: ids 1 and 2.
        let vmID = try daemon.add(["firecracker", "--socket", memory.socket("good-vm"), "--mem-file", memory.memoryFile])
        let guest = try Emulator(socket: memory.socket("good-vm"), memoryFile: memory.memoryFile,
                                 regions: ["4k:1M", "4k:512K"], threads: 2, wait: true)
        try guest.waitForLine(startingWith: "READY")
        let work = try images.workDirectory("good")
        let criuID = try daemon.add(["criu", "-D", images.images, "-W", work])
        #expect(vmID == "1" && criuID == "2", "the fuzzer avoids ids 1 and 2")
        let restorer = runInBackground([try BuiltProducts.path(of: "lazy-pages"), "restore-sim", "-D", images.images,
                                        "-W", work, "--scenario", "fork-storm", "--timeout", "120"])

        var tally = Tally()
        var failures: [String] = []
        func note(_ text: String) { if failures.count < 12 { failures.append(text) } }
        var pool: [Connection] = []
        while budget.allows(tally.inputs) {
            if tally.inputs == 100 { guest.go() }
            let input = Self.generate(&rng, paths)
            // A mutation may turn an id into "1" or "2": those jobs are checked at the end, leave them alone.
            if Self.names([vmID, criuID], input.bytes) { continue }
            tally.inputs += 1
            if pool.isEmpty || rng.oneIn(8) || pool.count < 8 {
                do {
                    pool.append(try Connection(path: daemon.controlSocket))
                } catch {
                    tally.crashes += 1
                    note("\(input.how): cannot connect: \(error)")
                    break
                }
            }
            let index = rng.below(pool.count)
            let connection = pool[index]
            let (lines, oversized) = Self.framing(input.bytes)
            let written = connection.write(input.bytes, pieces: input.pieces, descriptor: input.descriptor)
            if input.hangUp {
                pool.remove(at: index)
                continue
            }
            tally.lines += lines
            var closeAfter = oversized || !written
            for line in 0..<(lines + (oversized ? 1 : 0)) {
                let asked = ContinuousClock.now
                guard let reply = connection.readLine(timeout: 20) else {
                    if kill(daemon.process.pid, 0) != 0 || Self.isZombie(daemon.process.pid) {
                        tally.crashes += 1
                        note("\(input.how): the daemon is gone")
                    } else {
                        tally.hangs += 1
                        note("\(input.how): no reply to line \(line) of \(lines) in 20 s")
                    }
                    closeAfter = true
                    break
                }
                tally.slowest = max(tally.slowest, seconds(ContinuousClock.now - asked))
                guard let decoded = try? JSONDecoder().decode(ControlReply.self, from: Data(reply)) else {
                    tally.badReplies += 1
                    note("\(input.how): reply is not a ControlReply: \(String(decoding: reply, as: UTF8.self))")
                    continue
                }
                if decoded.ok {
                    tally.ok += 1
                    if let job = decoded.job, job.id != vmID, job.id != criuID, !job.state.isFinal {
                        // A job the fuzzer managed to add: cancel it right away.
                        tally.jobsAdded += 1
                        if (try? daemon.request(ControlRequest(op: .cancel, id: job.id)))?.job?.state.isFinal == true {
                            tally.jobsCancelled += 1
                        }
                    }
                } else if let code = decoded.code, decoded.error?.isEmpty == false {
                    tally.codes[code.rawValue, default: 0] += 1
                } else {
                    tally.badReplies += 1
                    note("\(input.how): refusal without a code or message: \(String(decoding: reply, as: UTF8.self))")
                }
                if oversized && line == lines && decoded.code != .tooLarge {
                    tally.badReplies += 1
                    note("\(input.how): an oversized line got \(String(decoding: reply, as: UTF8.self).prefix(200))")
                }
            }
            if closeAfter { pool.remove(at: index) }
            if pool.count > 32 { pool.removeFirst(8) }
        }
        pool.removeAll()
        print("control protocol fuzzer (lazy-pagesd serve): \(tally)\n\(failures.joined(separator: "\n"))")
        if !failures.isEmpty, let log = FileManager.default.contents(atPath: daemon.process.stderrPath) {
            print("the daemon's stderr:\n\(String(decoding: log.suffix(8192), as: UTF8.self))")
        }

        // The jobs alongside completed, every byte checked by their processes.
        let vm = guest.finish()
        #expect(vm == .exited(0), "the VM alongside: \(guest.lines)")
        let criu = try restorer()
        #expect(criu.exitCode == 0, "the CRIU restore alongside: \(criu.stdout) \(criu.stderr)")
        for id in [vmID, criuID] {
            let waited = try daemon.request(ControlRequest(op: .wait, id: id, timeoutSeconds: 60))
            #expect(waited.job?.state == .completed, "job \(id): \(String(describing: waited.job))")
        }
        // Nothing given as a socket path was clobbered.
        #expect((try? String(contentsOfFile: paths.decoy, encoding: .utf8)) == "keep me", "the decoy file was replaced")
        #expect(FileManager.default.contents(atPath: memory.memoryFile)?.count == 2 << 20, "the memory file was replaced")
        // Still serving, and shuts down cleanly.
        let listed = Result { try daemon.request(ControlRequest(op: .list)) }
        #expect((try? listed.get())?.ok == true, "\(listed)\n\(daemon.process.stderr.suffix(3000))")
        kill(daemon.process.pid, SIGTERM)
        let status = daemon.process.wait()
        print("control protocol fuzzer (lazy-pagesd serve): \(tally); jobs alongside: VM \(vm), CRIU exit \(criu.exitCode); "
              + "daemon exit \(status)")
        #expect(status == 0, "\(daemon.process.stderr.suffix(2000))")
        #expect(tally.inputs >= 200, "too few inputs in the time allowed: \(tally)")
        #expect(tally.crashes == 0 && tally.hangs == 0 && tally.badReplies == 0, "\(tally)\n\(failures.joined(separator: "\n"))")
        #expect(tally.ok > 0 && tally.codes.count >= 6, "the generator should reach most codes: \(tally)")
    }}

    /// True when a line of `bytes` is a request the daemon would apply to one of the jobs `ids`.
    static func names(_ ids: [String], _ bytes: [UInt8]) -> Bool {
        bytes.split(separator: 0x0a).contains { line in
            guard let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(line)), let id = request.id else {
                return false
            }
            return ids.contains(id)
        }
    }

    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }
}
