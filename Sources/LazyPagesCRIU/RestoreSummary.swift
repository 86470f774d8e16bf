import Foundation
import LazyPagesEngine

/// The end-of-restore line: processes, pages copied / zero-filled / faulted, seconds, GiB/s.
public struct RestoreSummary: Sendable {
    public let statistics: RestoreStatistics
    public init(statistics: RestoreStatistics) { self.statistics = statistics }

    public var line: String {
        let s = statistics
        let seconds = s.elapsedSeconds
        let bytes = Double(s.pagesCopied * pageSize)
        let rate = seconds > 0 ? bytes / seconds / Double(1 << 30) : 0
        return "lazy-pages: \(s[.tasksAnnounced]) tasks, \(s[.forks]) forked children, "
            + "\(s.pagesCopied) pages copied (\(s[.pagesCopiedOnFault]) on fault, \(s[.pagesCopiedInBackground]) in background), "
            + "\(s[.pagesZeroed]) zero-filled, \(s[.faults]) faults, \(s[.eagainRetries]) EAGAIN retries, "
            + String(format: "%.3f s, %.2f GiB/s", seconds, rate)
    }
}
