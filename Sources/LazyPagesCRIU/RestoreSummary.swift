import Foundation
import LazyPagesEngine
import LinuxSupport

/// The end-of-restore line: processes, pages copied / zero-filled / faulted, seconds, GiB/s.
public struct RestoreSummary: Sendable {
    public let statistics: RestoreStatistics
    public init(statistics: RestoreStatistics) { self.statistics = statistics }

    /// Every page copied (on fault and in background) over the restore's time, in GiB/s.
    public var gibPerSecond: Double {
        let seconds = statistics.elapsedSeconds
        return seconds > 0 ? Double(statistics.pagesCopied * basePageSize) / seconds / Double(1 << 30) : 0
    }

    public var line: String {
        let s = statistics
        let seconds = s.elapsedSeconds
        let rate = gibPerSecond
        return "lazy-pages: \(s[.tasksAnnounced]) tasks, \(s[.forks]) forked children, "
            + "\(s.pagesCopied) pages copied (\(s[.pagesCopiedOnFault]) on fault, \(s[.pagesCopiedInBackground]) in background), "
            + "\(s[.pagesZeroed]) zero-filled, \(s[.faults]) faults, \(s[.eagainRetries]) EAGAIN retries, "
            + String(format: "%.3f s, %.2f GiB/s", seconds, rate)
    }
}
