import Foundation
import Testing
import TestSupport

/// The fault path allocates nothing in steady state: lp-fault-allocations (which interposes malloc & co., so it runs
/// as a process of its own) serves real faults of its own memory with a `RestoreEngine` and counts the heap
/// allocations of the engine's thread over N faults after a warm-up.
///
/// The count is not 0 but a constant: stopping the count is itself a closure the engine's thread runs from its inbox,
/// and dispatching it (the inbox's iterator, the closure's context) allocates before the closure can stop counting.
/// So the check is that the count is the same for 256 and 4096 faults — nothing per fault — and no more than that
/// constant.
@Suite struct FaultAllocationTests {
    /// Allocations the measurement itself makes (dispatching the closure that stops the count).
    static let measurementAllocations = 2

    func measure(faults: Int) throws -> (faults: Int, allocations: Int) {
        let output = try Spawn.run([try BuiltProducts.path(of: "lp-fault-allocations"), String(faults)])
        #expect(output.exitCode == 0, "lp-fault-allocations \(faults): \(output.stderr)")
        let words = output.stdout.split(whereSeparator: \.isWhitespace)
        guard words.count == 6, words[0] == "faults", words[2] == "allocations", let served = Int(words[1]),
              let allocations = Int(words[3])
        else {
            Issue.record("lp-fault-allocations printed \(output.stdout.debugDescription), stderr \(output.stderr)")
            return (-1, -1)
        }
        return (served, allocations)
    }

    @Test(.timeLimit(.minutes(1))) func servingAFaultAllocatesNothing() throws {
        let few = try measure(faults: 256)
        let many = try measure(faults: 4096)
        #expect(few.faults == 256 && many.faults == 4096, "every touched page is one fault (fault-around 1, no fill)")
        #expect(many.allocations == few.allocations,
                "\(many.allocations - few.allocations) allocations over \(4096 - 256) more faults")
        #expect(many.allocations <= Self.measurementAllocations,
                "\(many.allocations) allocations over 4096 faults (break on lp_counted_allocation to see where)")
    }
}
