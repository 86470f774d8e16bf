import CLinuxSupport
import CUserfaultfd
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LazyPagesFirecracker
import LinuxSupport
import Logging
import TestSupport
import Testing
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// A seeded fuzzer over Firecracker's UFFD handshake: generated and mutated JSON region lists (malformed JSON, wrong
/// types, missing and unknown fields, overlapping, unaligned, empty, huge, negative, page-size mismatches, regions
/// outside the memory file or outside what the uffd registered, oversized messages) with descriptor variants (the
/// uffd, none, two, an eventfd, a pipe, /dev/null, a regular file, a socket), delivered whole, split, or not at all.
///
/// The bulk goes to in-process `FirecrackerSession`s (the test is the peer; `killPeerOnFailure` off) while one
/// healthy session serves `fc-emulator` alongside, which checks every byte at the end. Each input must be refused
/// with `Firecracker handshake refused (<code>): ...`, or accepted with mappings that obey every rule (then the
/// restore is cancelled, and every page it filled into the test's registered scratch memory must be the memory
/// file's byte for byte). A second, smaller run sends inputs the parser refuses to real `lazy-pagesd firecracker`
/// processes: each must exit 1 with the same refusal on stderr. A crash is the test process (or a daemon) dying;
/// a hang is an input with no outcome within 20 s.
@Suite(.serialized) struct HandshakeFuzzTests {
    enum Descriptors: String, CaseIterable {
        case uffd, none, twoUffds, eventfd, pipe, devNull, regularFile, socket, uffdAndEventfd
    }

    struct Input {
        var bytes: [UInt8]
        var descriptors: Descriptors
        var split = false
        var how: String
    }

    static let memoryBytes: UInt64 = 1 << 20
    static let scratchBytes = 1 << 20

    /// The test's own guest memory: 1 MiB registered (missing mode) with a uffd nobody else serves. It is never read
    /// directly (that would fault forever); `mincore` says which pages a session filled.
    final class Scratch {
        let base: UnsafeMutableRawPointer
        let uffd: Userfaultfd
        var address: UInt64 { UInt64(UInt(bitPattern: base)) }

        init() throws {
            guard let p = mmap(nil, scratchBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  p != MAP_FAILED else { throw Emulator.Failure(description: "mmap: errno \(errno)") }
            base = p
            uffd = try Userfaultfd.open()
            _ = try uffd.register(AddressRange(start: UInt64(UInt(bitPattern: p)), length: UInt64(scratchBytes)))
        }

        deinit { munmap(base, scratchBytes) }

        /// Offsets (from `base`) of the pages present.
        func presentPages() -> [Int] {
            var vector = [UInt8](repeating: 0, count: scratchBytes / 4096)
            _ = mincore(base, scratchBytes, &vector)
            return vector.indices.filter { vector[$0] & 1 != 0 }.map { $0 * 4096 }
        }

        func clear() { _ = madvise(base, scratchBytes, MADV_DONTNEED) }
    }

    // MARK: Generation

    static func validMappings(_ scratch: UInt64) -> [[String: String]] {
        [
            ["base_host_virt_addr": "\(scratch)", "size": "524288", "offset": "0", "page_size": "4096", "page_size_kib": "4096"],
            ["base_host_virt_addr": "\(scratch + 524288)", "size": "524288", "offset": "524288", "page_size": "4096",
             "page_size_kib": "4096"],
        ]
    }

    static func render(_ mappings: [[String: String]], _ rng: inout FuzzRandom) -> String {
        "[" + mappings.map { m in
            "{" + rng.shuffled(m.keys.sorted()).map { "\"\($0)\":\(m[$0]!)" }.joined(separator: ",") + "}"
        }.joined(separator: ",") + "]"
    }

    static func generate(_ rng: inout FuzzRandom, scratch: UInt64) -> Input {
        let descriptors: Descriptors = rng.below(10) < 7 ? .uffd : rng.pick(Descriptors.allCases)
        var input: Input
        switch rng.below(11) {
        case 10:
            // Two well-formed regions, the second starting somewhere inside the first.
            var mappings = validMappings(scratch)
            let start = scratch + UInt64(rng.below(128)) * 4096
            mappings[1]["base_host_virt_addr"] = "\(start)"
            input = Input(bytes: Array(render(mappings, &rng).utf8), descriptors: descriptors,
                          how: "second region at scratch+\(start - scratch)")
        case 0...3:
            input = structured(&rng, scratch: scratch)
        case 4...7:
            var bytes = Array(render(validMappings(scratch), &rng).utf8)
            var how: [String] = []
            for _ in 0...rng.below(3) {
                let (mutated, what) = ByteMutator.mutate(bytes, &rng)
                bytes = mutated
                how.append(what)
            }
            input = Input(bytes: bytes, descriptors: descriptors, how: "mutated: " + how.joined(separator: ", "))
        case 8:
            input = special(&rng, scratch: scratch)
        default:
            input = Input(bytes: Array(render(validMappings(scratch), &rng).utf8), descriptors: descriptors, how: "valid")
        }
        input.descriptors = descriptors
        if rng.oneIn(20) && !input.bytes.isEmpty {
            input.split = true
            input.how += " (split in two writes)"
        }
        return input
    }

    static func structured(_ rng: inout FuzzRandom, scratch: UInt64) -> Input {
        let addresses: [UInt64] = [scratch, scratch + 4096, scratch + 524288, scratch + 1 << 20, scratch - 4096,
                                   scratch + 1, 0, 4096, 1 << 47, UInt64.max - 4095, UInt64.max, scratch &+ (2 << 20)]
        let sizes: [UInt64] = [4096, 524288, 1 << 20, (1 << 20) + 4096, 0, 1, 2 << 20, UInt64.max, UInt64.max - 4095, 8192]
        let offsets: [UInt64] = [0, 4096, 524288, 1 << 20, (1 << 20) - 4096, 1, UInt64.max - 4095, 2 << 20]
        let pageSizes: [UInt64] = [4096, 4096, 4096, 2 << 20, 0, 1, 8192, 65536, 1 << 30, UInt64.max]
        let notNumbers = ["-4096", "-1", "1.5", "\"4096\"", "null", "true", "[]", "{}", "18446744073709551616",
                          "1e3", "0x1000", "4096 4096", "\"\"", "-0"]
        var mappings: [[String: String]] = []
        var how: [String] = []
        for _ in 0..<rng.below(5) {
            var m: [String: String] = [
                "base_host_virt_addr": "\(rng.pick(addresses))", "size": "\(rng.pick(sizes))",
                "offset": "\(rng.pick(offsets))", "page_size": "\(rng.pick(pageSizes))",
            ]
            for key in m.keys.sorted() {
                if rng.oneIn(16) {
                    m[key] = nil
                    how.append("no \(key)")
                } else if rng.oneIn(16) {
                    m[key] = rng.pick(notNumbers)
                    how.append("\(key)=\(m[key]!)")
                }
            }
            if rng.oneIn(4) { m["page_size_kib"] = "4096" }
            if let previous = mappings.last, rng.oneIn(4) {
                // Overlapping the previous region: the same start, or one page into it.
                m["base_host_virt_addr"] = rng.oneIn(2) ? previous["base_host_virt_addr"]
                    : previous["base_host_virt_addr"].flatMap(UInt64.init).map { "\($0 &+ 4096)" }
                m["page_size"] = previous["page_size"]
                how.append("overlapping")
            }
            if rng.oneIn(8) { m[rng.pick(["unknown", "Size", "", "base_host_virt_addr "])] = rng.pick(["1", "\"x\"", "null"]) }
            mappings.append(m)
        }
        return Input(bytes: Array(render(mappings, &rng).utf8), descriptors: .uffd,
                     how: "generated \(mappings.count) regions \(how)")
    }

    static func special(_ rng: inout FuzzRandom, scratch: UInt64) -> Input {
        let valid = render(validMappings(scratch), &rng)
        let choices: [(String, [UInt8])] = [
            ("empty message", []),
            ("empty array", Array("[]".utf8)),
            ("an object", Array("{\"base_host_virt_addr\":\(scratch)}".utf8)),
            ("null", Array("null".utf8)),
            ("one space", [0x20]),
            ("a NUL byte", [0]),
            ("invalid UTF-8", Array(valid.utf8.prefix(10)) + [0xff, 0xfe] + Array(valid.utf8.dropFirst(10))),
            ("trailing garbage", Array((valid + "}]x").utf8)),
            ("two arrays", Array((valid + valid).utf8)),
            ("deep nesting", [UInt8](repeating: UInt8(ascii: "["), count: 20_000) + [UInt8](repeating: UInt8(ascii: "]"), count: 20_000)),
            ("80 KiB of whitespace first", [UInt8](repeating: 0x20, count: 80 << 10) + Array(valid.utf8)),
            ("valid then 80 KiB of whitespace", Array(valid.utf8) + [UInt8](repeating: 0x20, count: 80 << 10)),
            ("1000 regions", Array(("[" + (0..<1000).map { i in
                "{\"base_host_virt_addr\":\(scratch + UInt64(i % 256) * 4096),\"size\":4096,\"offset\":\(i * 4096 % (1 << 20)),\"page_size\":4096}"
            }.joined(separator: ",") + "]").utf8)),
            ("a huge number", Array("[{\"base_host_virt_addr\":\(String(repeating: "9", count: 5000)),\"size\":4096,\"offset\":0,\"page_size\":4096}]".utf8)),
            ("random bytes", rng.bytes(1 + rng.below(512))),
        ]
        let (name, bytes) = rng.pick(choices)
        return Input(bytes: bytes, descriptors: .uffd, how: name)
    }

    // MARK: Delivery

    /// The descriptors to pass for `kind` (the caller closes them after sending).
    static func descriptors(_ kind: Descriptors, uffd: Int32) -> [Int32] {
        switch kind {
        case .uffd: return [dup(uffd)]
        case .none: return []
        case .twoUffds: return [dup(uffd), dup(uffd)]
        case .eventfd: return [eventfd(0, Int32(EFD_CLOEXEC))]
        case .pipe:
            var fds: [Int32] = [-1, -1]
            _ = pipe(&fds)
            close(fds[1])
            return [fds[0]]
        case .devNull: return [open("/dev/null", O_RDWR | O_CLOEXEC)]
        case .regularFile: return [open("/proc/self/exe", O_RDONLY | O_CLOEXEC)]
        case .socket: return [socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)]
        case .uffdAndEventfd: return [dup(uffd), eventfd(0, Int32(EFD_CLOEXEC))]
        }
    }

    static func connect(to path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if connected != 0 {
            close(fd)
            return -1
        }
        var limit = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Connects to `path` and sends `input` (nothing at all for an empty message: a plain hang-up).
    static func deliver(_ input: Input, to path: String, uffd: Int32) throws {
        let fd = connect(to: path)
        guard fd >= 0 else { throw Emulator.Failure(description: "connect \(path): errno \(errno)") }
        defer { close(fd) }
        guard !input.bytes.isEmpty else { return }
        let fds = descriptors(input.descriptors, uffd: uffd)
        defer { fds.forEach { close($0) } }
        let cut = input.split ? max(1, input.bytes.count / 2) : input.bytes.count
        // The peer may refuse and close early: a failed send is part of the game, not a test failure.
        try? DescriptorPassing.send(socket: fd, bytes: Array(input.bytes[..<cut]), descriptors: fds)
        if cut < input.bytes.count {
            _ = input.bytes[cut...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    /// What the handshake should be refused for, computed the way the session checks it (nil: accepted).
    static func predictedRefusal(_ input: Input) -> HandshakeError.Code? {
        guard !input.bytes.isEmpty else { return .hungUp }
        switch input.descriptors {
        case .none: return .noDescriptor
        case .twoUffds, .uffdAndEventfd: return .tooManyDescriptors
        case .eventfd, .pipe, .devNull, .regularFile, .socket: return .notUserfaultfd
        case .uffd: break
        }
        do {
            _ = try GuestMemoryMapping.validate(GuestMemoryMapping.decodeList(input.bytes), fileSize: memoryBytes)
            return nil
        } catch {
            return error.code
        }
    }

    /// What an accepted handshake must satisfy; nil when it does.
    static func ruleBroken(_ mappings: [GuestMemoryMapping]) -> String? {
        guard let first = mappings.first else { return "accepted with no mappings" }
        for m in mappings {
            if m.pageSize != first.pageSize || !supportedGuestPageSizes.contains(m.pageSize) { return "page size \(m.pageSize)" }
            if m.size == 0 || (m.baseHostVirtAddr | m.size | m.offset) & (m.pageSize - 1) != 0 { return "unaligned \(m)" }
            if m.baseHostVirtAddr.addingReportingOverflow(m.size).overflow { return "overflowing \(m)" }
            let (end, overflow) = m.offset.addingReportingOverflow(m.size)
            if overflow || end > memoryBytes { return "outside the file \(m)" }
        }
        for (a, b) in zip(mappings, mappings.dropFirst()) where a.end > b.baseHostVirtAddr { return "overlap \(a) \(b)" }
        return nil
    }

    // MARK: The in-process run

    struct Tally: CustomStringConvertible {
        var inputs = 0, crashes = 0, hangs = 0, accepted = 0, wrongPages = 0, pagesChecked = 0, unclear = 0, badAccepts = 0
        var refusals: [String: Int] = [:]
        var afterAccept: [String: Int] = [:]
        var slowest = 0.0
        var description: String {
            "inputs \(inputs), crashes \(crashes), hangs \(hangs), wrong pages \(wrongPages) (of \(pagesChecked) filled), unclear errors \(unclear), "
                + "accepted \(accepted) (rule broken \(badAccepts), then \(afterAccept.sorted { $0.key < $1.key })), "
                + "refused \(refusals.values.reduce(0, +)) \(refusals.sorted { $0.key < $1.key }), "
                + "slowest \(String(format: "%.3f", slowest)) s"
        }
    }

    @Test(.timeLimit(.minutes(20))) func fuzzedHandshakesAreRefusedClearlyWhileAGoodVMIsServed() async throws { try await oneHeavyTestAtATime {
        signal(SIGPIPE, SIG_IGN)
        let budget = FuzzBudget(seconds: 12, inputs: 20_000)
        var rng = FuzzRandom(seed: budget.seed)
        let scratch = try Scratch()
        let fuzzFixture = try SnapshotFixture(bytes: Int(Self.memoryBytes))

        // The healthy VM, served alongside from start to end.
        let goodFixture = try SnapshotFixture(bytes: 2 << 20)
        let goodSession = try goodFixture.session(backgroundFill: true)
        let goodOutcome = start(goodSession)
        let emulator = try Emulator(
            socket: goodFixture.socket, memoryFile: goodFixture.memoryFile, regions: ["4k:1M", "4k:512K"], threads: 2,
            wait: true)
        try emulator.waitForLine(startingWith: "READY")

        var quiet = Logger(label: "firecracker-fuzz")
        quiet.logLevel = .critical
        var tally = Tally()
        var failures: [String] = []
        func note(_ text: String) { if failures.count < 12 { failures.append(text) } }
        while budget.allows(tally.inputs) {
            if tally.inputs == 50 { emulator.go() }  // the guest runs while the fuzzing goes on
            let input = Self.generate(&rng, scratch: scratch.address)
            tally.inputs += 1
            var configuration = EngineConfiguration()
            configuration.backgroundFill = rng.oneIn(2)
            let session = try FirecrackerSession(
                socketPath: fuzzFixture.socket, memoryFile: fuzzFixture.memoryFile, configuration: configuration,
                logger: quiet)
            session.killPeerOnFailure = false
            let ended = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var outcome: RestoreOutcome?
            Thread {
                outcome = session.run()
                ended.signal()
            }.start()
            let began = ContinuousClock.now
            try Self.deliver(input, to: fuzzFixture.socket, uffd: scratch.uffd.descriptor)
            // An accepted handshake leaves the session serving the "VM" (this process) until it exits: cancel it.
            var accepted = false
            while ended.wait(timeout: .now() + .milliseconds(2)) == .timedOut {
                if !accepted && session.statistics[.tasksAnnounced] > 0 {
                    accepted = true
                    session.engine.cancel(reason: "fuzz: accepted")
                } else if ContinuousClock.now - began > .seconds(20) {
                    // (Inputs take milliseconds; 20 s leaves room for a machine loaded by a whole parallel test run.)
                    tally.hangs += 1
                    note("\(input.how) [\(input.descriptors)]: no outcome after 20 s")
                    session.engine.cancel(reason: "fuzz: hang")
                    ended.wait()
                    break
                }
            }
            tally.slowest = max(tally.slowest, seconds(ContinuousClock.now - began))
            switch outcome! {
            case .failed(let reason) where !accepted && session.mappings.isEmpty:
                if reason.hasPrefix("Firecracker handshake refused ("), let close = reason.firstIndex(of: ")") {
                    let code = String(reason[reason.index(reason.startIndex, offsetBy: 31)..<close])
                    tally.refusals[code, default: 0] += 1
                } else {
                    tally.unclear += 1
                    note("\(input.how) [\(input.descriptors)]: unclear refusal: \(reason)")
                }
            case let other:
                tally.accepted += 1
                let key: String = switch other {
                case .completed: "completed"
                case .cancelled: "cancelled"
                case .failed(let reason): "failed: " + reason.prefix(60)
                }
                tally.afterAccept[key, default: 0] += 1
                if let broken = Self.ruleBroken(session.mappings) {
                    tally.badAccepts += 1
                    note("\(input.how): accepted but \(broken)")
                }
                // Every page the session put into the scratch memory is the memory file's, byte for byte.
                for offset in scratch.presentPages() {
                    tally.pagesChecked += 1
                    let address = scratch.address + UInt64(offset)
                    guard let m = session.mappings.first(where: { $0.baseHostVirtAddr <= address && address < $0.end }) else {
                        tally.wrongPages += 1
                        note("\(input.how): page at scratch+\(offset) filled though no region covers it")
                        continue
                    }
                    let expected = session.memory.base! + Int(m.offset + (address - m.baseHostVirtAddr))
                    if memcmp(scratch.base + offset, expected, 4096) != 0 {
                        tally.wrongPages += 1
                        note("\(input.how): page at scratch+\(offset) differs from the memory file")
                    }
                }
                scratch.clear()
            }
        }
        let guest = emulator.finish()
        let good = goodOutcome()
        print("firecracker handshake fuzzer (in-process): \(tally); the VM alongside: \(guest), \(good)")
        #expect(guest == .exited(0), "the VM served alongside: \(emulator.lines)")
        #expect(good == .completed)
        #expect(tally.inputs >= 200, "too few inputs in the time allowed: \(tally)")
        #expect(tally.hangs == 0 && tally.unclear == 0 && tally.wrongPages == 0 && tally.badAccepts == 0,
                "\(tally)\n\(failures.joined(separator: "\n"))")
        #expect(tally.accepted > 0 && tally.pagesChecked > 0 && tally.refusals.count >= 9, "the generator should reach every rule: \(tally)")
    }}

    // MARK: Against the daemon

    @Test(.timeLimit(.minutes(20))) func refusedHandshakesEndTheDaemonWithTheReason() async throws { try await oneHeavyTestAtATime {
        signal(SIGPIPE, SIG_IGN)
        let budget = FuzzBudget(seconds: 8, inputs: 300)
        var rng = FuzzRandom(seed: budget.seed ^ 0xdae)
        let scratch = try Scratch()
        let daemon = try BuiltProducts.path(of: "lazy-pagesd")
        var inputs = 0, crashes = 0, hangs = 0, clear = 0, killedFromOutside = 0
        var failures: [String] = []
        while budget.allows(inputs) {
            var input = Self.generate(&rng, scratch: scratch.address)
            input.split = false
            // Only what the parser refuses (an accepted VM would be served until it exits), and small enough to
            // arrive in one read, so that the refusal can be predicted exactly.
            guard input.bytes.count <= 16 << 10, let expected = Self.predictedRefusal(input) else { continue }
            inputs += 1
            let fixture = try SnapshotFixture(bytes: Int(Self.memoryBytes))
            let notify = try NotifyReceiver(path: fixture.directory + "/notify")
            let process = try DaemonProcess(
                daemon, ["firecracker", "--socket", fixture.socket, "--mem-file", fixture.memoryFile, "--no-kill"],
                environment: ["NOTIFY_SOCKET=\(notify.path)"], directory: fixture.directory)
            _ = try notify.receive()
            try Self.deliver(input, to: fixture.socket, uffd: scratch.uffd.descriptor)
            let exited = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var status: Int32 = 0
            nonisolated(unsafe) let waited = process
            Thread {
                status = waited.wait()
                exited.signal()
            }.start()
            if exited.wait(timeout: .now() + 20) == .timedOut {
                hangs += 1
                kill(process.pid, SIGKILL)
                exited.wait()
                if failures.count < 10 { failures.append("\(input.how): the daemon did not exit in 20 s") }
                continue
            }
            let stderr = process.stderr
            if status == -SIGKILL {
                // Not something a daemon does to itself (a Swift trap is SIGILL or SIGTRAP): another test of a
                // parallel `swift test` run, or the OOM killer. Counted and shown, not taken for a crash.
                killedFromOutside += 1
                print("firecracker handshake fuzzer: a daemon was killed with SIGKILL from outside (\(input.how))")
            } else if status < 0 || status > 1 {
                crashes += 1
                if failures.count < 10 { failures.append("\(input.how): status \(status): \(stderr)") }
            } else if status == 1 && stderr.contains("lazy-pagesd: restore failed: Firecracker handshake refused (\(expected))") {
                clear += 1
            } else if failures.count < 10 {
                failures.append("\(input.how) [\(input.descriptors)]: expected (\(expected)), got status \(status): \(stderr)")
            }
        }
        print("firecracker handshake fuzzer (lazy-pagesd firecracker): inputs \(inputs), crashes \(crashes), hangs \(hangs), "
              + "refused with the predicted reason \(clear), killed from outside \(killedFromOutside)")
        #expect(inputs >= 10, "too few inputs in the time allowed")
        #expect(crashes == 0 && hangs == 0 && clear + killedFromOutside == inputs && killedFromOutside <= 2, "\(failures.joined(separator: "\n"))")
    }}
}
