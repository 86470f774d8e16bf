import SystemPackage
import Testing
import Userfaultfd

/// `CopyOutcome.classify`: the ioctl's return value, errno and result field folded into one decision.
/// The rows for partial and EEXIST are what kernel 6.18 returned (see `FaultServingTests.copyStopsAtAPresentPage`).
struct CopyOutcomeTests {
    struct Row: Sendable, CustomTestStringConvertible {
        let returnValue: Int32
        let errno: Errno
        let result: Int64
        let expected: CopyOutcome
        var testDescription: String { "rc \(returnValue), \(errno), result \(result) -> \(expected)" }
    }

    static let page = 4096

    /// A failed call: errno `e`, result field `result` (default: `-e`, as current kernels write it).
    static func failure(_ e: Errno, result: Int64? = nil, _ expected: CopyOutcome) -> Row {
        Row(returnValue: -1, errno: e, result: result ?? -Int64(e.rawValue), expected: expected)
    }

    static let rows: [Row] = [
        // Success: the kernel writes the length into the result field.
        Row(returnValue: 0, errno: Errno(rawValue: 0), result: Int64(4 * page), expected: .done(bytes: 4 * page)),
        // A later page was present: the kernel filled the prefix and says EAGAIN with the bytes done.
        failure(.resourceTemporarilyUnavailable, result: Int64(2 * page), .partial(bytes: 2 * page)),
        // mmap_changing on current kernels: EAGAIN with -EAGAIN in the result.
        failure(.resourceTemporarilyUnavailable, .retryAfterEvents),
        // mmap_changing on kernels up to ~6.14: EAGAIN with the result left at its pre-set 0.
        failure(.resourceTemporarilyUnavailable, result: 0, .retryAfterEvents),
        // The first page was present: EEXIST with -EEXIST, nothing filled.
        failure(.fileExists, .alreadyPresent),
        failure(.noSuchFileOrDirectory, .rangeGone(.noSuchFileOrDirectory)),
        failure(.invalidArgument, .rangeGone(.invalidArgument)),
        // ESRCH before any work: the kernel returns before touching the result field.
        failure(.noSuchProcess, result: 0, .processGone(.noSuchProcess)),
        failure(.noSpace, .processGone(.noSpace)),
        failure(.badAddress, .failed(.badAddress)),
        failure(.noMemory, .failed(.noMemory)),
        // Interrupted after a page: what was done is reported.
        failure(.interrupted, result: Int64(page), .partial(bytes: page)),
    ]

    @Test(arguments: rows)
    func classify(_ row: Row) {
        let outcome = CopyOutcome.classify(
            returnValue: row.returnValue, errno: row.errno.rawValue, result: row.result, requested: 4 * Self.page)
        #expect(outcome == row.expected)
    }

    @Test func bytesDoneCountsOnlyFilledBytes() {
        #expect(CopyOutcome.done(bytes: 8192).bytesDone == 8192)
        #expect(CopyOutcome.partial(bytes: 4096).bytesDone == 4096)
        #expect(CopyOutcome.retryAfterEvents.bytesDone == 0)
        #expect(CopyOutcome.alreadyPresent.bytesDone == 0)
        #expect(CopyOutcome.processGone(.noSuchProcess).bytesDone == 0)
    }
}
