import LazyPagesCRIU
import LazyPagesEngine

extension RestoreReport {
    /// A restore that never ran because its guardian could not be started (the error says so: `GuardianStartError`).
    static func guardianDidNotStart(_ error: Error, statistics: RestoreStatistics) -> RestoreReport {
        RestoreReport(outcome: .failed(reason: "\(error)"), summary: RestoreSummary(statistics: statistics).line)
    }
}
