import SystemPackage
import Testing
import Userfaultfd
@testable import LazyPagesEngine

/// The one reading of a copy outcome (`CopyPolicy.step`), outcome by outcome: what every copy path then does.
@Suite struct CopyPolicyTests {
    var policy: CopyPolicy {
        var configuration = EngineConfiguration()
        configuration.memoryRefusalRetries = 2
        return CopyPolicy(configuration)
    }

    /// Runs the policy on `outcome` for a run of `pages` pages, with `applied` events readable; returns the step
    /// and how often the events were read.
    func step(_ outcome: CopyOutcome, pages: Int = 4, applied: Int = 0, refusals: inout Int) -> (CopyStep, Int) {
        var drains = 0
        let step = policy.step(after: outcome, pageCount: pages, pageSize: 4096, memoryRefusals: &refusals) {
            drains += 1
            return applied
        }
        return (step, drains)
    }

    @Test func deliveriesCountPagesAndResetMemoryRefusals() {
        var refusals = 1
        #expect(step(.done(bytes: 4 * 4096), refusals: &refusals) == (.delivered(pages: 4, woken: true), 0))
        #expect(refusals == 0)
        #expect(step(.partial(bytes: 2 * 4096), refusals: &refusals) == (.delivered(pages: 2, woken: true), 0))
        // A present first page is one page home, whose waiters the copy did not wake.
        #expect(step(.alreadyPresent, refusals: &refusals) == (.delivered(pages: 1, woken: false), 0))
    }

    @Test func eagainReadsEventsThenRetriesOrWaits() {
        var refusals = 0
        #expect(step(.retryAfterEvents, applied: 1, refusals: &refusals) == (.retry, 1))
        #expect(step(.retryAfterEvents, applied: 0, refusals: &refusals) == (.refused, 1))
    }

    @Test func aGoneRangeIsRetriedAfterEventsThenShrunkThenDropped() {
        var refusals = 0
        #expect(step(.rangeGone(.noSuchFileOrDirectory), applied: 2, refusals: &refusals) == (.retry, 1))
        #expect(step(.rangeGone(.noSuchFileOrDirectory), pages: 5, refusals: &refusals) == (.shrink(maxPages: 2), 1))
        #expect(step(.rangeGone(.invalidArgument), pages: 1, refusals: &refusals)
                == (.dropped(.invalidArgument), 1))
    }

    @Test func aGoneProcessRetiresAndOtherFailuresFail() {
        var refusals = 0
        #expect(step(.processGone(.noSuchProcess), refusals: &refusals) == (.retired(.noSuchProcess), 0))
        #expect(step(.failed(.badAddress), refusals: &refusals) == (.failed(.badAddress), 0))
    }

    /// ENOMEM (the memory cgroup at its limit) waits like a refused copy, `memoryRefusalRetries` times in a row.
    @Test func memoryRefusalsWaitAFewTimesThenFail() {
        var refusals = 0
        #expect(step(.failed(.noMemory), refusals: &refusals) == (.refused, 0))
        #expect(step(.failed(.noMemory), refusals: &refusals) == (.refused, 0))
        #expect(refusals == 2)
        #expect(step(.failed(.noMemory), refusals: &refusals) == (.failed(.noMemory), 0))
        // A delivery in between starts the count again.
        _ = step(.done(bytes: 4096), refusals: &refusals)
        #expect(step(.failed(.noMemory), refusals: &refusals) == (.refused, 0))
    }
}
