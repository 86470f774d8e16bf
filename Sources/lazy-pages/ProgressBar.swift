import Dispatch
import Foundation
import LazyPagesCRIU
import LazyPagesEngine
import LinuxSupport

/// A one-line live progress bar on stderr: how far the restore has come, faults served, and the background fill's
/// rate over the last tick; the final line gives the whole restore's average copy rate (the summary's figure).
///
/// "How far" counts the announced tasks' pages that are home, dropped (their range went away) or no longer needed
/// (their task exited with them pending), against the pages the images hold for those tasks: a restore whose
/// processes exit early ends at 100% too, as every page anybody still wanted is home.
final class ProgressBar: @unchecked Sendable {
    private let statistics: RestoreStatistics
    private let stopped = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let interactive = isatty(2) != 0

    init(statistics: RestoreStatistics) { self.statistics = statistics }

    func start() {
        let thread = Thread { [self] in
            var lastPages = 0
            var lastTime = monotonicNanoseconds()
            var lastPrinted = lastTime
            while stopped.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
                let now = monotonicNanoseconds()
                let background = statistics[.pagesCopiedInBackground]
                let rate = Double((background - lastPages) * basePageSize) / (Double(now - lastTime) / 1e9) / Double(1 << 30)
                lastPages = background
                lastTime = now
                if interactive || now - lastPrinted >= 1_000_000_000 {
                    FileHandle.standardError.write(Data(line(rate: rate, final: false).utf8))
                    lastPrinted = now
                }
            }
            FileHandle.standardError.write(Data(line(rate: RestoreSummary(statistics: statistics).gibPerSecond,
                                                     final: true).utf8))
            done.signal()
        }
        thread.start()
    }

    func stop() {
        stopped.signal()
        done.wait()
    }

    /// How far the restore has come: the announced tasks' pages home (copied or dropped), those no longer needed,
    /// and the pages expected (never 0).
    static func progress(_ statistics: RestoreStatistics) -> (home: Int, notNeeded: Int, expected: Int) {
        let expected = max(1, statistics[.pagesExpected])
        let home = min(expected, statistics.pagesCopied + statistics[.pagesDropped])
        return (home, min(expected - home, statistics[.pagesAbandoned]), expected)
    }

    private func line(rate: Double, final: Bool) -> String {
        let (home, notNeeded, expected) = Self.progress(statistics)
        let fraction = Double(home + notNeeded) / Double(expected)
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        var line = String(format: "[%@] %3.0f%%  pages home %d/%d", bar, fraction * 100, home, expected)
        if notNeeded > 0 { line += " (+\(notNeeded) not needed: their tasks exited)" }
        line += "  faults \(statistics[.faults])  "
        line += String(format: final ? "average %.2f GiB/s" : "background %.2f GiB/s", rate)
        return interactive ? "\r" + line + "\u{1B}[K" + (final ? "\n" : "") : line + "\n"
    }
}
