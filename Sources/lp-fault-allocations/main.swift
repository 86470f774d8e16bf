// lp-fault-allocations: counts the heap allocations the engine's thread makes while it serves faults in steady
// state, for FaultAllocationTests. This executable links CAllocationCounter, which interposes malloc & co. for the
// whole process (so it is an executable of its own, not linked into the test bundle).
//
// A region of this process registered MISSING with a real uffd, served by a `RestoreEngine` on its own thread
// (one page per fault, no background fill: every copy is a fault's). The main thread touches warm-up pages, then
// the engine's thread starts counting, the main thread touches `measured` more pages (each a fault), and the
// engine's thread stops counting. Prints `faults F allocations A frees R`; exits 1 on any failure (naming it).
import CAllocationCounter
import Foundation
import LazyPagesEngine
import LinuxSupport
import Logging
import Userfaultfd

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("lp-fault-allocations: \(message)\n".utf8))
    exit(1)
}

let warmUp = 256
let measured = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 0 : 4096
guard measured > 0 else { fail("usage: lp-fault-allocations [faults to count]") }
let pages = warmUp + measured
let length = pages * basePageSize

func mapAnonymous() -> UnsafeMutableRawPointer {
    let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    guard let p, p != MAP_FAILED else { fail("mmap: \(errno)") }
    return p
}
let region = mapAnonymous()
let source = mapAnonymous()
for p in 0..<pages { source.storeBytes(of: UInt8(truncatingIfNeeded: p &* 31 &+ 7), toByteOffset: p * basePageSize, as: UInt8.self) }
let address = UInt64(UInt(bitPattern: region))

let uffd: Userfaultfd
do {
    uffd = try Userfaultfd.open()
    _ = try uffd.register(AddressRange(start: address, length: UInt64(length)))
} catch {
    fail("uffd: \(error)")
}

var configuration = EngineConfiguration()
configuration.faultAroundPages = 1
configuration.backgroundFill = false
configuration.fillBeforeAllTasksAnnounced = false
var logger = Logger(label: "lp-fault-allocations")
logger.logLevel = .warning
let engine: RestoreEngine
do {
    engine = try RestoreEngine(configuration: configuration, logger: logger)
    try engine.addTask(imagePid: 1, uffd: uffd, space: AddressSpace(extents: [
        LazyExtent(start: address, dumpAddress: address, data: UnsafeRawPointer(source), pageCount: pages)
    ]))
} catch {
    fail("engine: \(error)")
}

/// What the engine's thread measured, handed to the main thread through the semaphores.
final class Measurement: @unchecked Sendable {
    var faultsBefore = 0
    var faultsAfter = 0
    var allocations = 0
    var frees = 0
    let started = DispatchSemaphore(value: 0)
    let stopped = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
}
let measurement = Measurement()
nonisolated(unsafe) var outcome: RestoreOutcome?
let thread = Thread {
    outcome = engine.run()
    measurement.finished.signal()
}
thread.start()

@MainActor func touch(_ range: Range<Int>) {
    for p in range {
        let got = region.load(fromByteOffset: p * basePageSize, as: UInt8.self)
        let expected = source.load(fromByteOffset: p * basePageSize, as: UInt8.self)
        if got != expected { fail("page \(p) reads \(got), not \(expected)") }
    }
}

touch(0..<warmUp)
engine.execute { engine in
    measurement.faultsBefore = engine.statistics[.faults]
    measurement.started.signal()
    lp_allocations_start()
}
measurement.started.wait()
touch(warmUp..<pages)
engine.execute { engine in
    var frees = 0
    measurement.allocations = lp_allocations_stop(&frees)
    measurement.frees = frees
    measurement.faultsAfter = engine.statistics[.faults]
    measurement.stopped.signal()
}
measurement.stopped.wait()
engine.cancel(reason: "measured")
measurement.finished.wait()
guard case .cancelled = outcome else { fail("the engine ended \(String(describing: outcome)), not cancelled") }
print("faults \(measurement.faultsAfter - measurement.faultsBefore) allocations \(measurement.allocations) frees \(measurement.frees)")
