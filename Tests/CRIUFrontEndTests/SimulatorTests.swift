import CRIUImages
import Dispatch
import Foundation
import LazyPagesCRIU
import CLinuxSupport  // SOCK_STREAM, SOCK_CLOEXEC: declared in a header CLinuxSupport includes too
import LinuxSupport
import RestoreSimulator
import TestSupport
import Testing
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

// The restore simulator against the real kernel: the tests play the daemon's side of lazy-pages.socket themselves
// (listen, take pids and uffds, serve faults with UFFDIO_COPY/UFFDIO_ZEROPAGE) and check what lp-workload reports.

/// A tiny image set: per task, VMA A (64 pages: 0..<32 lazy, 32..<40 eager, 40..<48 never dumped, 48..<56 lazy,
/// 56..<64 never dumped), VMA B (16 lazy pages) and VMA C (8 eager pages, never registered).
enum TestImages {
    static let base: UInt64 = 0x5a00_0000_0000
    static let page = UInt64(basePageSize)
    static let pagesPerTask = 64 + 16 + 8

    static func write(to directory: String, pids: [UInt32], allEager: Bool = false) throws {
        let lazy: PagemapFlags = allEager ? [.present] : [.lazy, .present]
        let specs = pids.enumerated().map { index, pid in
            let seed = 42 + UInt64(pid)
            let fill: @Sendable (UInt64, UnsafeMutableRawBufferPointer) -> Void = { address, buffer in
                PagePattern.fill(seed: seed, pageIndex: (address - base) / page, into: buffer)
            }
            let a = base, b = base + 0x10_0000, c = base + 0x20_0000
            return ProcessSpec(
                pid: pid, ppid: index == 0 ? 0 : pids[0],
                vmas: [
                    VMA(start: a, end: a + 64 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: b, end: b + 16 * page, prot: 3, flags: 0x22, status: 0x41),
                    VMA(start: c, end: c + 8 * page, prot: 3, flags: 0x22, status: 0x41),
                ],
                runs: [
                    RunSpec(address: a, pageCount: 32, flags: lazy, fill: fill),
                    RunSpec(address: a + 32 * page, pageCount: 8, flags: [.present], fill: fill),
                    RunSpec(address: a + 48 * page, pageCount: 8, flags: lazy, fill: fill),
                    RunSpec(address: b, pageCount: 16, flags: lazy, fill: fill),
                    RunSpec(address: c, pageCount: 8, flags: [.present], fill: fill),
                ])
        }
        try ImageWriter.write(directory: directory, processes: specs)
    }

    /// Page address → content of every lazy page of `pid`, read through `ImageSet`.
    static func lazyPages(directory: String, pid: Int32) throws -> [UInt64: [UInt8]] {
        let process = try ImageSet(directory: directory).process(pid: pid)
        var pages: [UInt64: [UInt8]] = [:]
        for run in process.lazyRuns {
            guard case .file(let path, let offset) = run.data else { continue }
            let data = try #require(FileManager.default.contents(atPath: path))
            for i in 0..<run.pageCount {
                let at = Int(offset) + i * basePageSize
                pages[run.address + UInt64(i * basePageSize)] = Array(data[at..<(at + basePageSize)])
            }
        }
        return pages
    }
}

/// The daemon's end of lazy-pages.socket, listening in `directory`.
final class TestListener {
    let fd: Int32
    init(directory: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = directory + "/lazy-pages.socket"
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0)
        try #require(listen(fd, 4) == 0)
    }
    deinit { close(fd) }

    func accept() throws -> Int32 {
        let connection = Glibc.accept(fd, nil, nil)
        try #require(connection >= 0)
        _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
        return connection
    }
}

/// What the daemon side of the socket received.
struct Handover {
    var pids: [Int32] = []
    var uffds: [Int32: Int32] = [:]  // virtual pid → descriptor
    var trailer: [UInt8] = []  // the 4 bytes after the last task (RSTF), or fewer at EOF
    var endOfFile = false
}

/// Receives `taskCount` tasks the way the daemon does (pid; for pid > 0 one byte + SCM_RIGHTS), then the trailer.
func receiveHandover(_ connection: Int32, taskCount: Int) throws -> Handover {
    var handover = Handover()
    for _ in 0..<taskCount {
        let word = readExactly(connection, 4)
        try #require(word.count == 4)
        let pid = word.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        handover.pids.append(pid)
        if pid > 0 {
            let message = try DescriptorPassing.receive(socket: connection, maxBytes: 1, maxDescriptors: 2)
            #expect(message.bytes == [0])
            #expect(message.descriptors.count == 1)
            #expect(!message.truncated)
            handover.uffds[pid] = message.descriptors.first ?? -1
        }
    }
    handover.trailer = readExactly(connection, 4)
    handover.endOfFile = readExactly(connection, 1).isEmpty
    return handover
}

/// A minimal fault loop on a thread of its own: each fault gets its page from `pages` (UFFDIO_COPY) or zeros
/// (UFFDIO_ZEROPAGE). No fork/remap/remove handling: enough for scenarios that do not change their layout.
final class FaultServer: @unchecked Sendable {
    private let served: [(Userfaultfd, [UInt64: [UInt8]])]
    private var stopPipe: [Int32] = [-1, -1]
    private let finished = DispatchSemaphore(value: 0)

    init(_ served: [(Userfaultfd, [UInt64: [UInt8]])]) {
        self.served = served
        _ = pipe(&stopPipe)
        Thread.detachNewThread { [self] in
            run()
            finished.signal()
        }
    }

    /// Copies every page in, as a background fill would.
    func fillEverything() {
        for (uffd, pages) in served {
            for (address, data) in pages {
                let outcome = data.withUnsafeBytes { uffd.copy(to: address, from: $0.baseAddress!, length: basePageSize) }
                #expect(outcome == .done(bytes: basePageSize) || outcome == .alreadyPresent)
            }
        }
    }

    func stop() {
        var byte: UInt8 = 1
        _ = Glibc.write(stopPipe[1], &byte, 1)
        finished.wait()
        close(stopPipe[0])
        close(stopPipe[1])
    }

    private func run() {
        var batch = EventBatch(capacity: 16)
        while true {
            var fds = served.map { pollfd(fd: $0.0.descriptor, events: Int16(POLLIN), revents: 0) }
            fds.append(pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0))
            if poll(&fds, nfds_t(fds.count), -1) < 0 { continue }
            if fds[fds.count - 1].revents != 0 { return }
            for (i, (uffd, pages)) in served.enumerated() where fds[i].revents & Int16(POLLIN) != 0 {
                guard let count = try? batch.read(from: uffd) else { continue }
                for k in 0..<count {
                    guard case .success(.pageFault(let address, _, _)) = batch[k] else { continue }
                    let page = address & ~UInt64(basePageSize - 1)
                    let outcome: CopyOutcome
                    if let data = pages[page] {
                        outcome = data.withUnsafeBytes { uffd.copy(to: page, from: $0.baseAddress!, length: basePageSize) }
                    } else {
                        outcome = uffd.zeroPage(at: page, length: basePageSize)
                    }
                    if outcome == .alreadyPresent {
                        try? uffd.wake(AddressRange(start: page, length: UInt64(basePageSize)))
                    }
                }
            }
        }
    }
}

/// The features the uffd was negotiated with, from `/proc/self/fdinfo` ("API:\t<api>:<features>:<ioctls>").
func negotiatedFeatures(_ fd: Int32) -> Features? {
    guard let text = try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("API:") {
        let fields = line.dropFirst(4).trimmingCharacters(in: .whitespaces).split(separator: ":")
        if fields.count == 3, let raw = UInt64(fields[1], radix: 16) { return Features(rawValue: raw) }
    }
    return nil
}

@Suite("Restore simulator", .timeLimit(.minutes(1)))
struct SimulatorTests {
    @Test("wire bytes: pids in pstree order, one uffd per live task, a zombie as -pid, then RSTF and EOF")
    func wireBytes() throws {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1, 2, 3])
        let listener = try TestListener(directory: directory)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: directory, scenario: "verify", seed: 7, zombies: [3]))
        try simulation.start()  // everything fits in the socket buffer: no accept needed yet
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 3)
        #expect(handover.pids == [1, 2, -3])
        #expect(handover.trailer == [0x46, 0x54, 0x53, 0x52])
        #expect(handover.endOfFile)
        let wanted: Features = [.eventFork, .eventRemap, .eventRemove, .eventUnmap]
        for (_, fd) in handover.uffds {
            #expect(DescriptorCheck.isUserfaultfd(fd))
            #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
            #expect(negotiatedFeatures(fd)?.isSuperset(of: wanted) == true)
        }
        let server = FaultServer(
            try handover.uffds.sorted { $0.key < $1.key }.map { pid, fd in
                (Userfaultfd(adopting: fd), try TestImages.lazyPages(directory: directory, pid: pid))
            })
        let report = try simulation.wait()
        server.stop()
        #expect(report.allPassed, "\(describe(report))")
        #expect(report.tasks.map(\.virtualPid).sorted() == [1, 2, 3])
        #expect(report.tasks.first { $0.virtualPid == 3 }?.realPid == 0)
    }

    @Test("hang-up before RSTF: the socket ends right after the last task")
    func hangUp() throws {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1])
        let listener = try TestListener(directory: directory)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: directory, scenario: "exit-mid", hangUpBeforeRSTF: true))
        try simulation.start()
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 1)
        #expect(handover.pids == [1])
        #expect(handover.trailer.isEmpty)
        let server = FaultServer([
            (Userfaultfd(adopting: try #require(handover.uffds[1])), try TestImages.lazyPages(directory: directory, pid: 1))
        ])
        let report = try simulation.wait()
        server.stop()
        #expect(report.allPassed, "\(describe(report))")
    }

    @Test("no daemon: start fails like CRIU")
    func noListener() throws {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1])
        let simulation = try RestoreSimulation(options: SimulationOptions(imagesDirectory: directory))
        #expect {
            try simulation.start()
        } throws: { error in
            "\(error)".contains("connect to lazy-pages.socket failed")
        }
    }

    /// Starts one task, serves it from `pages` (the image's lazy pages, possibly altered) and returns the report.
    func serveOneTask(
        scenario: String, alter: (inout [UInt64: [UInt8]]) -> Void = { _ in }, fillFirst: Bool = false
    ) throws -> SimulationReport {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1])
        let listener = try TestListener(directory: directory)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: directory, scenario: scenario, seed: 11))
        try simulation.start()
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 1)
        #expect(handover.trailer == [0x46, 0x54, 0x53, 0x52])
        var pages = try TestImages.lazyPages(directory: directory, pid: 1)
        #expect(pages.count == 56)
        alter(&pages)
        let server = FaultServer([(Userfaultfd(adopting: try #require(handover.uffds[1])), pages)])
        if fillFirst {
            server.fillEverything()
            simulation.releaseWaiting()
        }
        let report = try simulation.wait()
        server.stop()
        return report
    }

    @Test("every page of a lazily served task matches the image", arguments: ["verify", "threads"])
    func verifyServed(scenario: String) throws {
        let report = try serveOneTask(scenario: scenario)
        #expect(report.allPassed, "\(describe(report))")
        let task = try #require(report.tasks.first)
        #expect(task.exitStatus == 0)
        // `threads` checks the 64 shared pages once per thread.
        let checked = TestImages.pagesPerTask + (scenario == "threads" ? 7 * 64 : 0)
        #expect(task.output.contains { $0.hasPrefix("OK task=1 ") && $0.contains("pages=\(checked) failures=0") })
    }

    @Test("idle: pages copied in without faults, then released, read back exactly")
    func idleAfterFill() throws {
        let report = try serveOneTask(scenario: "idle", fillFirst: true)
        #expect(report.allPassed, "\(describe(report))")
        #expect(report.tasks.first?.output.contains { $0.contains("released=go") } == true)
    }

    @Test("a page served with one byte flipped makes the workload fail, naming the address and the byte")
    func flippedByte() throws {
        let bad = TestImages.base + 5 * TestImages.page
        let report = try serveOneTask(scenario: "verify") { pages in pages[bad]![100] ^= 0x01 }
        #expect(!report.allPassed)
        let task = try #require(report.tasks.first)
        #expect(task.exitStatus == 1)
        #expect(task.output.contains {
            $0.hasPrefix("FAIL") && $0.contains("addr=0x\(String(bad, radix: 16))") && $0.contains("byte=100")
        })
    }

    @Test("a workload whose faults nobody serves is killed at the timeout and reported as failed")
    func timeout() throws {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1])
        let listener = try TestListener(directory: directory)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: directory, scenario: "verify", timeout: .seconds(2)))
        try simulation.start()
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 1)
        defer { handover.uffds.values.forEach { close($0) } }  // held, never served: the workload hangs in a fault
        let report = try simulation.wait()
        let task = try #require(report.tasks.first)
        #expect(!task.passed)
        #expect(task.exitStatus == -SIGKILL)
        #expect(task.output.contains { $0.hasPrefix("simulator: timed out") })
    }

    static let fixture = SharedFixtures.criuTreeproc

    @Test("a real CRIU dump (criu-treeproc, two tasks) restores through the simulator, served by the test")
    func realDump() throws {
        let work = try makeTemporaryDirectory()
        let listener = try TestListener(directory: work)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: Self.fixture, workDirectory: work, scenario: "verify", seed: 2))
        try simulation.start()
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 2)
        #expect(handover.pids.sorted() == [13288, 13290])
        #expect(handover.trailer == [0x46, 0x54, 0x53, 0x52])
        let server = FaultServer(
            try handover.uffds.sorted { $0.key < $1.key }.map { pid, fd in
                (Userfaultfd(adopting: fd), try TestImages.lazyPages(directory: Self.fixture, pid: pid))
            })
        let report = try simulation.wait()
        server.stop()
        #expect(report.allPassed, "\(describe(report))")
    }

    @Test("every scenario's own bookkeeping holds when all memory is eager (no uffd range registered)",
          arguments: SimulationOptions.scenarios)
    func eagerOnly(scenario: String) throws {
        let directory = try makeTemporaryDirectory()
        try TestImages.write(to: directory, pids: [1, 2], allEager: true)
        let listener = try TestListener(directory: directory)
        let simulation = try RestoreSimulation(
            options: SimulationOptions(imagesDirectory: directory, scenario: scenario, seed: 3))
        try simulation.start()
        let connection = try listener.accept()
        defer { close(connection) }
        let handover = try receiveHandover(connection, taskCount: 2)
        defer { handover.uffds.values.forEach { close($0) } }
        simulation.releaseWaiting()
        let report = try simulation.wait()
        #expect(report.allPassed, "\(describe(report))")
    }
}
