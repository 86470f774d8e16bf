import CoreMetrics
import Foundation
import LazyPagesControl
import LazyPagesEngine
import LinuxSupport
import Prometheus

/// The service's Prometheus series, brought up to date from the jobs' engine counters at each scrape (the restore
/// loops only bump their own atomic counters; nothing on the fault path touches a metrics object).
///
/// Counters and gauges are swift-metrics objects backed by a swift-prometheus registry of our own. The fault
/// service latency histogram is aggregated by the engines into fixed µs buckets (`RestoreStatistics
/// .faultLatencyBucketBounds`) and written out in the Prometheus text format here, since a Prometheus histogram
/// object can only be fed one observation at a time.
final class ServiceMetrics: @unchecked Sendable {
    static let latencyName = "lazy_pages_fault_service_microseconds"

    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private let registryLock = NSLock()
    private let jobs: JobRegistry
    /// Totals already exported per counter series, so that each scrape adds only what is new.
    private var exported: [String: Int] = [:]
    private var counters: [String: CoreMetrics.Counter] = [:]
    private var jobGauges: [String: [CoreMetrics.Gauge]] = [:]
    private let stateGauges: [JobState: CoreMetrics.Gauge]

    /// `name{label="value"}` for each counter total: the engine counter(s) it sums.
    private static let totals: [(name: String, dimensions: [(String, String)], sum: @Sendable ([RestoreStatistics.Counter: Int]) -> Int)] = [
        ("lazy_pages_faults_total", [], { $0[.faults, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "copied")], { $0[.copiesDone, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "zero")], { $0[.zeroFillsDone, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "already_present")], { $0[.alreadyPresent, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "retried_after_events")], { $0[.eagainRetries, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "process_gone")], { $0[.copiesProcessGone, default: 0] }),
        ("lazy_pages_copy_outcomes_total", [("outcome", "error")], { $0[.copiesFailed, default: 0] }),
        ("lazy_pages_pages_delivered_total", [("how", "fault")], { $0[.pagesCopiedOnFault, default: 0] }),
        ("lazy_pages_pages_delivered_total", [("how", "background")], { $0[.pagesCopiedInBackground, default: 0] }),
        ("lazy_pages_pages_delivered_total", [("how", "zero")], { $0[.pagesZeroed, default: 0] }),
        ("lazy_pages_bytes_delivered_total", [], {
            ($0[.pagesCopiedOnFault, default: 0] + $0[.pagesCopiedInBackground, default: 0]
                + $0[.pagesZeroed, default: 0]) * basePageSize
        }),
        ("lazy_pages_eagain_retries_total", [], { $0[.eagainRetries, default: 0] }),
        ("lazy_pages_tasks_total", [], { $0[.tasksAnnounced, default: 0] }),
    ]

    /// Per-job series (`lazy_pages_job_*{job}`); off by default (see `LazyPagesService.Options.metricsPerJob`).
    private let perJob: Bool

    init(jobs: JobRegistry, perJob: Bool = false) {
        self.jobs = jobs
        self.perJob = perJob
        factory = PrometheusMetricsFactory(registry: registry)
        var states: [JobState: CoreMetrics.Gauge] = [:]
        for state in JobState.allCases {
            states[state] = Gauge(label: "lazy_pages_jobs", dimensions: [("state", state.rawValue)], factory: factory)
        }
        stateGauges = states
    }

    private static func key(_ name: String, _ dimensions: [(String, String)]) -> String {
        name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
    }

    /// The Prometheus text exposition of every series, current as of now.
    func render() -> String {
        registryLock.lock()
        defer { registryLock.unlock() }
        let all = jobs.jobs(for: nil)
        let forgotten = jobs.forgottenTotals
        var sums = forgotten.counters
        var buckets = forgotten.latencyBuckets
        var latencySum = forgotten.latencySumNanoseconds
        var byState: [JobState: Int] = [:]
        var seen: Set<String> = []
        for job in all {
            let s = job.statistics
            for counter in RestoreStatistics.Counter.allCases { sums[counter, default: 0] += s[counter] }
            let latency = s.faultLatency
            for (i, n) in latency.buckets.enumerated() { buckets[i] += n }
            latencySum &+= latency.sumNanoseconds
            let state = job.state.0
            byState[state, default: 0] += 1
            guard perJob else { continue }
            seen.insert(job.id)
            let gauges = jobGauges[job.id] ?? {
                let made = ["lazy_pages_job_pages_home", "lazy_pages_job_pages_expected", "lazy_pages_job_faults"].map {
                    Gauge(label: $0, dimensions: [("job", job.id)], factory: factory)
                }
                jobGauges[job.id] = made
                return made
            }()
            gauges[0].record(s.pagesCopied)
            gauges[1].record(s[.pagesExpected])
            gauges[2].record(s[.faults])
        }
        // Forgotten jobs lose their series.
        for (id, gauges) in jobGauges where !seen.contains(id) {
            gauges.forEach { $0.destroy() }
            jobGauges[id] = nil
        }
        for state in JobState.allCases { stateGauges[state]!.record(byState[state, default: 0]) }
        for total in Self.totals {
            let key = Self.key(total.name, total.dimensions)
            let value = total.sum(sums)
            let counter = counters[key] ?? {
                let made = Counter(label: total.name, dimensions: total.dimensions, factory: factory)
                counters[key] = made
                return made
            }()
            let delta = value - exported[key, default: 0]
            if delta > 0 { counter.increment(by: delta) }
            exported[key] = max(value, exported[key, default: 0])
        }
        return registry.emitToString() + Self.histogramText(buckets: buckets, sumNanoseconds: latencySum)
    }

    static func histogramText(buckets: [Int], sumNanoseconds: UInt64) -> String {
        var text = "# TYPE \(latencyName) histogram\n"
        var cumulative = 0
        for (i, bound) in RestoreStatistics.faultLatencyBucketBounds.enumerated() {
            cumulative += buckets[i]
            text += "\(latencyName)_bucket{le=\"\(bound)\"} \(cumulative)\n"
        }
        cumulative += buckets[buckets.count - 1]
        text += "\(latencyName)_bucket{le=\"+Inf\"} \(cumulative)\n"
        text += "\(latencyName)_sum \(Double(sumNanoseconds) / 1000)\n"
        text += "\(latencyName)_count \(cumulative)\n"
        return text
    }
}
