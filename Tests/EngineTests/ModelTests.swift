import Foundation
import LinuxSupport
import TestSupport
import Testing
import Userfaultfd
@testable import LazyPagesEngine

/// `PageBitmap`, `AddressSpace`, `FillOrder` and `RemoteFetches` against plain models (a set of pages; a map from a
/// page's runtime address to its dump address; a list of processes; a list of requests), over seeded random
/// sequences of the operations a restore applies: deliveries, `mremap`, `MADV_DONTNEED`, `munmap`, forks (a copy that
/// then goes its own way), compaction, faults, retirements, remote requests and their answers. Every failure names
/// the seed and the step; `LP_MODEL_SEED` reruns one seed, `LP_MODEL_RUNS` sets how many.
@Suite struct ModelTests {
    static let runs = Int(ProcessInfo.processInfo.environment["LP_MODEL_RUNS"] ?? "") ?? 40
    static let seeds: [UInt64] = {
        if let one = UInt64(ProcessInfo.processInfo.environment["LP_MODEL_SEED"] ?? "") { return [one] }
        return (1...UInt64(runs)).map { $0 }
    }()

    @Test func pageBitmapMatchesASetOfPages() {
        for seed in Self.seeds {
            var rng = FuzzRandom(seed: seed)
            let count = 1 + rng.below(300)
            var bitmap = PageBitmap(count: count, filled: true)
            var model = Set(0..<count)
            for step in 0..<40 {
                let start = rng.below(count)
                let length = rng.below(count - start + 1)
                let expected = model.intersection(start..<start + length).count
                let cleared = bitmap.clear(start, length)
                model.subtract(start..<start + length)
                let context: Comment = "seed \(seed) step \(step): clear(\(start), \(length)) of \(count)"
                #expect(cleared == expected, context)
                guard check(bitmap, against: model, count: count, &rng, context) else { return }
                if rng.oneIn(4) {
                    let from = rng.below(count)
                    let sliceLength = rng.below(count - from + 1)
                    let slice = bitmap.slice(from, sliceLength)
                    let sliced = Set(model.filter { $0 >= from && $0 < from + sliceLength }.map { $0 - from })
                    guard check(slice, against: sliced, count: sliceLength, &rng, "\(context), slice(\(from), \(sliceLength))")
                    else { return }
                }
            }
        }
    }

    /// Checks every query of `bitmap` against `model`; false (after recording) at the first difference.
    func check(_ bitmap: PageBitmap, against model: Set<Int>, count: Int, _ rng: inout FuzzRandom, _ context: Comment)
        -> Bool
    {
        guard bitmap.count == count, bitmap.setCount == model.count else {
            Issue.record("\(context): count \(bitmap.count)/\(count), set \(bitmap.setCount)/\(model.count)")
            return false
        }
        for index in 0..<count where bitmap.isSet(index) != model.contains(index) {
            Issue.record("\(context): bit \(index) is \(bitmap.isSet(index)), the model says \(model.contains(index))")
            return false
        }
        for _ in 0..<8 {
            let from = rng.below(count + 2)
            let expected = model.filter { $0 >= from }.min()
            guard bitmap.nextSet(from: from) == expected else {
                Issue.record("\(context): nextSet(from: \(from)) = \(String(describing: bitmap.nextSet(from: from))), not \(String(describing: expected))")
                return false
            }
            guard let first = expected else { continue }
            let limit = rng.oneIn(4) ? Int.max : 1 + rng.below(count)
            var run = 0
            while run < limit && model.contains(first + run) { run += 1 }
            guard bitmap.runLength(from: first, limit: limit) == run else {
                Issue.record("\(context): runLength(from: \(first), limit: \(limit)) = \(bitmap.runLength(from: first, limit: limit)), not \(run)")
                return false
            }
        }
        return true
    }

    /// The model of one process's address space: every pending page's runtime address and its dump address.
    typealias SpaceModel = [UInt64: UInt64]

    static let base: UInt64 = 0x7f00_0000_0000
    static let page = UInt64(basePageSize)
    /// Pages in the window the operations touch.
    static let window = 256

    @Test func addressSpaceMatchesAMapOfPendingPages() {
        for seed in Self.seeds {
            var rng = FuzzRandom(seed: seed)
            // A few runs of the image, apart or adjacent, dump address = runtime address at first.
            var extents: [LazyExtent] = []
            var model = SpaceModel()
            var next = rng.below(8)
            while next < Self.window - 1 {
                let pages = 1 + rng.below(min(40, Self.window - next))
                let start = Self.base + UInt64(next) * Self.page
                extents.append(LazyExtent(start: start, dumpAddress: start, data: nil, pageCount: pages))
                for i in 0..<pages { model[start + UInt64(i) * Self.page] = start + UInt64(i) * Self.page }
                next += pages + rng.below(12)
            }
            // Processes: index 0 the task; forks append copies.
            var spaces = [AddressSpace(extents: extents)]
            var models = [model]
            for step in 0..<60 {
                let who = rng.below(spaces.count)
                let operation = describe(step: rng.below(6), &spaces[who], &models[who], &rng)
                if operation == "fork" && spaces.count < 6 {
                    spaces.append(spaces[who])
                    models.append(models[who])
                }
                let context: Comment = "seed \(seed) step \(step): process \(who) \(operation)"
                for index in spaces.indices {
                    guard check(spaces[index], against: models[index], &rng, "\(context) (checking process \(index))")
                    else { return }
                }
            }
        }
    }

    /// Applies one random operation to `space` and `model`; returns what it was.
    func describe(step kind: Int, _ space: inout AddressSpace, _ model: inout SpaceModel, _ rng: inout FuzzRandom)
        -> String
    {
        func range(_ maxPages: Int) -> (UInt64, UInt64) {
            let first = rng.below(Self.window)
            let pages = 1 + rng.below(maxPages)
            return (Self.base + UInt64(first) * Self.page, Self.base + UInt64(first + pages) * Self.page)
        }
        func drop(_ start: UInt64, _ end: UInt64) { model = model.filter { $0.key < start || $0.key >= end } }
        switch kind {
        case 0:
            let (start, end) = range(16)
            let pages = Int((end - start) / Self.page)
            let expected = model.keys.filter { $0 >= start && $0 < end }.count
            let cleared = space.markDelivered(start, pages: pages)
            drop(start, end)
            #expect(cleared == expected, "markDelivered cleared \(cleared), the model \(expected)")
            return "markDelivered(\(hex(start)), \(pages))"
        case 1:
            // mremap: source and destination do not overlap (the kernel refuses that).
            let pages = 1 + rng.below(24)
            let length = UInt64(pages) * Self.page
            let from = Self.base + UInt64(rng.below(Self.window)) * Self.page
            var to = Self.base + UInt64(rng.below(Self.window + 64)) * Self.page
            if to < from + length && from < to + length { to = from + length + UInt64(rng.below(8)) * Self.page }
            space.remap(from: from, to: to, length: length)
            let moved = model.filter { $0.key >= from && $0.key < from + length }
            drop(from, from + length)
            drop(to, to + length)
            for (address, dump) in moved { model[address - from + to] = dump }
            return "remap(\(hex(from)) → \(hex(to)), \(pages) pages)"
        case 2:
            let (start, end) = range(20)
            space.remove(start, end)
            drop(start, end)
            return "remove(\(hex(start)), \(hex(end)))"
        case 3:
            let (start, end) = range(20)
            space.unmap(start, end)
            drop(start, end)
            return "unmap(\(hex(start)), \(hex(end)))"
        case 4:
            space.compact()
            return "compact"
        default:
            return "fork"
        }
    }

    /// Checks `space`'s queries against `model`; false (after recording) at the first difference.
    func check(_ space: AddressSpace, against model: SpaceModel, _ rng: inout FuzzRandom, _ context: Comment) -> Bool {
        guard space.pendingPages == model.count, space.isComplete == model.isEmpty else {
            Issue.record("\(context): \(space.pendingPages) pages pending, the model has \(model.count)")
            return false
        }
        // Every page of the window (and past it, where remaps land): pending exactly where the model says, with the
        // dump address the model says, and the run from it as long as the model's.
        for index in 0..<(Self.window + 96) {
            let address = Self.base + UInt64(index) * Self.page
            let run = space.pendingRun(at: address + UInt64(rng.below(basePageSize)), maxPages: 64)
            guard let dump = model[address] else {
                if let run {
                    Issue.record("\(context): page \(hex(address)) is pending (run \(run.pageCount)); the model says not")
                    return false
                }
                continue
            }
            guard let run, run.address == address, run.dumpAddress == dump else {
                Issue.record("\(context): page \(hex(address)) should be pending from dump \(hex(dump)), got \(String(describing: run))")
                return false
            }
            var length = 0
            while length < 64, let next = model[address + UInt64(length) * Self.page],
                next == dump + UInt64(length) * Self.page
            {
                length += 1
            }
            // A run never spans two extents; it is at most as long as the model's contiguous pages.
            guard run.pageCount >= 1, run.pageCount <= length else {
                Issue.record("\(context): the run at \(hex(address)) has \(run.pageCount) pages; the model allows \(length)")
                return false
            }
        }
        // The fill's walk (`nextPendingRun`, from the lowest address) meets every pending page exactly once.
        var seen: [UInt64: UInt64] = [:]
        var cursor: UInt64 = 0
        while let run = space.nextPendingRun(from: cursor, maxPages: 1 + rng.below(32)), run.address >= cursor {
            for i in 0..<run.pageCount {
                seen[run.address + UInt64(i) * Self.page] = run.dumpAddress + UInt64(i) * Self.page
            }
            cursor = run.address + UInt64(run.pageCount) * Self.page
        }
        guard seen == model else {
            Issue.record("\(context): the walk met \(seen.count) pages, the model has \(model.count)")
            return false
        }
        return true
    }

    func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    /// `FillOrder` against the rule it keeps incrementally, recomputed from a plain list of processes each time:
    /// among the live processes the fill may serve now, the one whose latest fault is the most recent, else the
    /// first tracked (lowest id) that never faulted. Operations: track, fault (the engine's clock goes up by one and
    /// becomes the process's `lastFault`), retire, and ask for the next process under a random eligibility.
    @Test func fillOrderMatchesAPlainListOfProcesses() {
        let uffd = Userfaultfd(adopting: -1)
        for seed in Self.seeds {
            var rng = FuzzRandom(seed: seed)
            var order = FillOrder()
            var processes: [TrackedProcess] = []
            var clock: UInt64 = 0
            func track() {
                let process = TrackedProcess(id: processes.count + 1, imagePid: 1, parentID: nil, uffd: uffd,
                                             space: AddressSpace(extents: []))
                processes.append(process)
                order.tracked(process)
            }
            for _ in 0..<(1 + rng.below(8)) { track() }
            for step in 0..<400 {
                let live = processes.filter { !$0.retired }
                var operation: String
                switch rng.below(10) {
                case 0, 1:
                    track()
                    operation = "track \(processes.count)"
                case 2:
                    guard let victim = live.isEmpty ? nil : rng.pick(live) else { continue }
                    victim.retired = true
                    operation = "retire \(victim.id)"
                case 3, 4, 5, 6:
                    guard !live.isEmpty else { continue }
                    // Recent faulters fault again often (the in-place update of the last entry), others at random.
                    let process = rng.oneIn(3) && clock > 0
                        ? (live.max { $0.lastFault < $1.lastFault } ?? live[0]) : rng.pick(live)
                    clock += 1
                    process.lastFault = clock
                    order.faulted(process, clock: clock, liveCount: live.count)
                    operation = "fault \(process.id) at \(clock)"
                default:
                    operation = "next"
                }
                // Ask after every operation, under an eligibility that holds for a random part of the processes.
                let modulus = 1 + rng.below(4)
                let salt = rng.below(modulus)
                let eligible = { (process: TrackedProcess) in (process.id + salt) % modulus != 0 || modulus == 1 }
                let candidates = processes.filter { !$0.retired && eligible($0) }
                let expected = candidates.filter { $0.lastFault != 0 }.max { $0.lastFault < $1.lastFault }
                    ?? candidates.first { $0.lastFault == 0 }
                let got = order.next(where: eligible)
                guard got === expected else {
                    Issue.record("seed \(seed) step \(step): after \(operation), next(where: (id + \(salt)) % \(modulus) != 0) is process \(got.map { String($0.id) } ?? "none"), the model says \(expected.map { String($0.id) } ?? "none")")
                    return
                }
            }
        }
    }

    /// `RemoteFetches` against a plain unsorted list of the requests in flight per pid: every question (the request
    /// covering a page, how many pages can be asked for before one in flight, the sorted book itself, what the source
    /// was sent) recomputed by a linear scan after every send and answer, answers in random order, some unknown.
    @Test func remoteFetchesMatchAPlainListOfRequests() {
        final class RecordingSource: RemotePageSource {
            var sent: [RemotePageRequest] = []
            func start(engine: RestoreEngine) throws {}
            func request(_ request: RemotePageRequest) { sent.append(request) }
            var backgroundPagesAvailable: Int { 512 }
        }
        let pids: [Int32] = [1, 2, 7]
        func page(_ index: Int) -> UInt64 { Self.base + UInt64(index) * Self.page }
        for seed in Self.seeds {
            var rng = FuzzRandom(seed: seed)
            let source = RecordingSource()
            let fetches = RemoteFetches(source: source)
            var model: [RemotePageRequest] = []
            var sent: [RemotePageRequest] = []
            func modelBefore(_ pid: Int32, _ address: UInt64, _ count: Int) -> Int {
                var free = 0
                while free < count, !model.contains(where: {
                    $0.imagePid == pid && $0.dumpAddress <= address + UInt64(free) * Self.page
                        && address + UInt64(free) * Self.page < $0.dumpEnd
                }) {
                    free += 1
                }
                return free
            }
            for step in 0..<150 {
                var operation: String
                if model.isEmpty || rng.below(3) != 0 {
                    let pid = rng.pick(pids)
                    let address = page(rng.below(Self.window))
                    let wanted = 1 + rng.below(rng.oneIn(4) ? 64 : 6)
                    let expected = modelBefore(pid, address, wanted)
                    let free = fetches.pagesBeforeInFlight(of: pid, from: address, pageCount: wanted)
                    guard free == expected else {
                        Issue.record("seed \(seed) step \(step): pagesBeforeInFlight(of: \(pid), from: \(hex(address)), pageCount: \(wanted)) = \(free), the model says \(expected)")
                        return
                    }
                    guard free > 0 else { continue }
                    let request = RemotePageRequest(imagePid: pid, dumpAddress: address, pageCount: free, urgent: rng.oneIn(2))
                    fetches.send(request)
                    model.append(request)
                    sent.append(request)
                    operation = "send \(request)"
                } else if rng.oneIn(5) {
                    // An answer to nothing in flight (already answered, or never asked for) changes nothing.
                    let stray = RemotePageRequest(imagePid: rng.pick(pids), dumpAddress: page(rng.below(Self.window)),
                                                  pageCount: 1 + rng.below(4), urgent: false)
                    if let i = model.firstIndex(of: stray) { model.remove(at: i) }
                    fetches.answered(stray)
                    operation = "answer \(stray) (stray)"
                } else {
                    let request = model.remove(at: rng.below(model.count))
                    fetches.answered(request)
                    operation = "answer \(request)"
                }
                let context = "seed \(seed) step \(step): after \(operation)"
                guard source.sent == sent else {
                    Issue.record("\(context): the source was sent \(source.sent.count) requests, the model \(sent.count)")
                    return
                }
                for pid in pids {
                    let book = fetches.inFlight[pid]
                    let expected = model.filter { $0.imagePid == pid }.sorted { $0.dumpAddress < $1.dumpAddress }
                    guard book ?? [] == expected, (book == nil) == expected.isEmpty else {
                        Issue.record("\(context): pid \(pid) has \(String(describing: book)) in flight, the model \(expected)")
                        return
                    }
                    for _ in 0..<12 {
                        let address = page(rng.below(Self.window + 64)) + UInt64(rng.below(basePageSize))
                        let covering = model.first { $0.imagePid == pid && $0.dumpAddress <= address && address < $0.dumpEnd }
                        guard fetches.request(of: pid, covering: address) == covering else {
                            Issue.record("\(context): request(of: \(pid), covering: \(hex(address))) = \(String(describing: fetches.request(of: pid, covering: address))), the model says \(String(describing: covering))")
                            return
                        }
                        let start = address & ~(Self.page - 1)
                        let count = 1 + rng.below(80)
                        let free = modelBefore(pid, start, count)
                        guard fetches.pagesBeforeInFlight(of: pid, from: start, pageCount: count) == free else {
                            Issue.record("\(context): pagesBeforeInFlight(of: \(pid), from: \(hex(start)), pageCount: \(count)) = \(fetches.pagesBeforeInFlight(of: pid, from: start, pageCount: count)), the model says \(free)")
                            return
                        }
                    }
                }
            }
        }
    }
}
