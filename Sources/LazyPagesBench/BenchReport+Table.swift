import Foundation

/// One target of issue 6 and how this run fared against it.
public struct TargetCheck: Sendable, Codable {
    public var name: String
    public var measured: String
    public var target: String
    public var met: Bool?
}

extension BenchReport {
    /// Ours / floor for (a), GiB/s ratios for (b), and the other targets.
    public var targets: [TargetCheck] {
        var checks: [TargetCheck] = []
        func ratio(_ a: Double, _ b: Double) -> Double { b > 0 ? a / b : .nan }
        if let floor, let demand {
            let p50 = ratio(demand.latency.p50, floor.latency.p50)
            let p99 = ratio(demand.latency.p99, floor.latency.p99)
            checks.append(TargetCheck(name: "(a) fault p50 / floor", measured: fmt(p50) + "x", target: "<= 1.2x", met: p50 <= 1.2))
            if let spin = floorSpin {
                let r = ratio(demand.latency.p50, spin.latency.p50)
                checks.append(TargetCheck(name: "(a) p50 / spinning floor", measured: fmt(r) + "x", target: "<= 1.2x", met: r <= 1.2))
            }
            checks.append(TargetCheck(name: "(a) fault p99 / floor", measured: fmt(p99) + "x", target: "<= 1.5x", met: p99 <= 1.5))
        }
        if let fill, ceilingGiBps > 0 {
            let r = ratio(fill.gibPerSecond, ceilingGiBps)
            checks.append(TargetCheck(name: "(b) fill / ceiling", measured: fmt(r) + "x", target: ">= 0.9x", met: r >= 0.9))
        }
        if let working, let fill {
            let r = ratio(working.totalSeconds, fill.seconds)
            checks.append(TargetCheck(name: "(c) working / fill", measured: fmt(r) + "x", target: "<= 1.1x", met: r <= 1.1))
        }
        if let forking {
            let perGiB = forking.seconds / (Double(imageBytes) / Double(1 << 30))
            checks.append(TargetCheck(name: "(d) forking, s per GiB", measured: fmt(perGiB) + " s", target: "<= 1 s", met: perGiB <= 1))
        }
        if let floor, let remoteDemand {
            let p50 = ratio(remoteDemand.latency.p50, floor.latency.p50)
            checks.append(TargetCheck(name: "(e-a) remote p50 / floor", measured: fmt(p50) + "x", target: "<= 3x", met: p50 <= 3))
        }
        if let remoteFill {
            let gbps = remoteFill.gibPerSecond * Double(1 << 30) / 1e9
            checks.append(TargetCheck(name: "(e-b) remote fill", measured: fmt(gbps) + " GB/s", target: ">= 1.5 GB/s", met: gbps >= 1.5))
        }
        let criuTargets: [String: Double] = ["idle": 1.5, "fork": 3, "random": 1.5, "remote": 4, "remote-tls": 3]
        for row in criu {
            guard let target = criuTargets[row.workload] else { continue }
            checks.append(TargetCheck(
                name: "criu \(row.workload): CRIU / ours", measured: fmt(row.speedup) + "x", target: ">= \(fmt(target))x",
                met: row.speedup >= target))
        }
        if let random = criu.first(where: { $0.workload == "random" }),
           let idle = criu.first(where: { $0.workload == "idle" && $0.bytes == random.bytes }) {
            let r = random.oursMedian / idle.oursMedian
            checks.append(TargetCheck(name: "criu random / idle (ours)", measured: fmt(r) + "x", target: "<= 1.1x", met: r <= 1.1))
        }
        if let fill {
            let budgetKiB = 32 * 1024 + imageBytes / 4096 / 8 / 1024
            checks.append(TargetCheck(
                name: "memory (b) anon peak", measured: "\(fill.daemon.peakAnonKiB) KiB",
                target: "<= \(budgetKiB) KiB", met: fill.daemon.peakAnonKiB <= budgetKiB))
        }
        return checks
    }

    /// The readable report.
    public var table: String {
        var out: [String] = []
        let gib = Double(imageBytes) / Double(1 << 30)
        out.append("lazy-pages bench: \(imageBytes >> 20) MiB image, \(machine.cpus) CPUs (\(machine.cpu)), kernel \(machine.kernel), \(machine.date)")
        out.append("load average: \(machine.loadAtStart) at start, \(machine.loadAtEnd) at end (\(machine.cpus) CPUs; other load skews every number)")
        out.append("daemon tunables: fault-around \(tunables.faultAround.map(String.init) ?? "default"), fill-chunk \(tunables.fillChunk.map(String.init) ?? "default"), fill-chunk-max \(tunables.fillChunkMax.map(String.init) ?? "default"), spin-after-fault \(tunables.spinAfterFault.map(String.init) ?? "default")")
        out.append("")
        out.append("baselines (C)")
        for c in ceiling {
            let threads = c.threads == 1 ? "" : " x\(c.threads) threads"
            out.append("  ceiling UFFDIO_COPY \(pad(kib(c.chunkBytes) + threads, 8))  median \(fmt(c.median)) GiB/s  best \(fmt(c.best)) GiB/s  passes \(c.passes.map(fmt).joined(separator: " "))")
        }
        if let floor {
            out.append("  floor   minimal handler      \(latencyText(floor.latency))")
        }
        if let spin = floorSpin {
            out.append("  floor   spinning handler     \(latencyText(spin.latency))")
        }
        out.append("")
        out.append("lazy-pagesd")
        let floorLatency = floor?.latency
        func vsFloor(_ l: LatencySummary) -> String {
            guard let f = floorLatency, f.p50 > 0, f.p99 > 0 else { return "" }
            return "  | ours/floor p50 \(fmt(l.p50 / f.p50))x p90 \(fmt(l.p90 / f.p90))x p99 \(fmt(l.p99 / f.p99))x"
        }
        if let a = demand {
            out.append("  (a)  demand only              \(latencyText(a.latency))\(vsFloor(a.latency))")
            out.append("       \(a.faults) faults for \(a.touches) touches; daemon \(daemonText(a.daemon))")
        }
        if let a = demandSinglePage {
            out.append("  (a1) demand, fault-around 1   \(latencyText(a.latency))\(vsFloor(a.latency))")
            out.append("       \(a.faults) faults for \(a.touches) touches; daemon \(daemonText(a.daemon))")
        }
        if let b = fill {
            let r = ceilingGiBps > 0 ? "  | ours/ceiling \(fmt(b.gibPerSecond / ceilingGiBps))x" : ""
            out.append("  (b)  fill, idle process       \(fmt(b.seconds)) s  \(fmt(b.gibPerSecond)) GiB/s (to exit \(fmt(b.wallSeconds)) s)\(r)")
            out.append("       daemon \(daemonText(b.daemon))")
        }
        if let c = working {
            let vsFill = fill.map { "  | ours/fill \(fmt(c.totalSeconds / $0.seconds))x" } ?? ""
            out.append("  (c)  working process + fill   \(fmt(c.totalSeconds)) s all home, workload \(fmt(c.workloadSeconds)) s, \(c.faults) faults of \(c.touches) touches\(vsFill)")
            out.append("       faults: \(latencyText(c.latency))\(vsFloor(c.latency))")
            out.append("       daemon \(daemonText(c.daemon))")
        }
        if let d = forking {
            out.append("  (d)  fork-storm (lp-workload) \(fmt(d.seconds)) s all home (\(fmt(d.seconds / gib)) s/GiB), \(d.daemon.pagesCopied) pages copied")
            out.append("       daemon \(daemonText(d.daemon))")
        }
        func serverText(_ seconds: Double?) -> String { seconds.map { "; page server CPU \(fmt($0)) s" } ?? "" }
        if let e = remoteDemand {
            out.append("  (e-a) remote, demand only     \(latencyText(e.latency))\(vsFloor(e.latency))")
            out.append("       \(e.faults) faults for \(e.touches) touches; daemon \(daemonText(e.daemon))\(serverText(e.pageServerCPUSeconds))")
        }
        if let e = remoteFill {
            let r = ceilingGiBps > 0 ? "  | ours/ceiling \(fmt(e.gibPerSecond / ceilingGiBps))x" : ""
            let gbps = e.gibPerSecond * Double(1 << 30) / 1e9
            out.append("  (e-b) remote, fill, idle      \(fmt(e.seconds)) s  \(fmt(e.gibPerSecond)) GiB/s = \(fmt(gbps)) GB/s (to exit \(fmt(e.wallSeconds)) s)\(r)")
            out.append("       daemon \(daemonText(e.daemon))\(serverText(e.pageServerCPUSeconds))")
        }
        if remoteDemand == nil && remoteFill == nil { out.append("  (e)  remote: not run") }
        if let f = concurrent {
            out.append("  (f)  \(f.restores) x \(f.bytesEach >> 20) MiB at once     \(fmt(f.wallSeconds)) s wall, \(fmt(f.aggregateGiBps)) GiB/s aggregate, slowest \(fmt(f.slowestSeconds)) s, \(f.faults) faults")
            out.append("       faults: \(latencyText(f.latency))\(vsFloor(f.latency))")
            out.append("       daemons: \(fmt(f.daemonCPUSeconds)) s CPU total, peak anon \(f.maxPeakAnonKiB) KiB, peak RSS \(f.maxPeakRSSKiB) KiB (max of one)")
        }
        if !criu.isEmpty {
            out.append("")
            out.append("CRIU 4.2 against lazy-pagesd: one real criu dump per workload, restored with criu restore --lazy-pages")
            out.append("(criu restore started -> the daemon exited with every page home), alternating, median of the rounds")
            for row in criu {
                let what = ["remote": "idle, page server on 127.0.0.1", "remote-tls": "idle, TLS page server on 127.0.0.1"][
                    row.workload] ?? row.workload
                out.append("  \(pad("\(what) \(row.bytes >> 20) MiB", 42)) CRIU \(fmt(row.criuMedian)) s  ours \(fmt(row.oursMedian)) s  CRIU/ours \(fmt(row.speedup))x  (load \(row.loadAtStart) -> \(row.loadAtEnd))")
                out.append("       CRIU: \(row.criu.map { fmt($0.seconds) }.joined(separator: " ")) s, daemon CPU \(fmt(median(row.criu.map(\.daemonCPUSeconds)))) s, peak anon \(row.criu.map(\.daemonPeakAnonKiB).max() ?? 0) KiB\(serverCPU(row.criu))")
                let fills = row.ours.compactMap(\.fillSeconds)
                let fill = fills.isEmpty ? "" : " (fill alone \(fills.map(fmt).joined(separator: " ")) s)"
                out.append("       ours: \(row.ours.map { fmt($0.seconds) }.joined(separator: " ")) s\(fill), daemon CPU \(fmt(median(row.ours.map(\.daemonCPUSeconds)))) s, peak anon \(row.ours.map(\.daemonPeakAnonKiB).max() ?? 0) KiB\(serverCPU(row.ours))")
                if let arguments = row.variantArguments {
                    let fills = row.variant.compactMap(\.fillSeconds)
                    let fill = fills.isEmpty ? "" : " (fill alone \(fills.map(fmt).joined(separator: " ")) s)"
                    out.append("       ours \(arguments.joined(separator: " ")): \(row.variant.map { fmt($0.seconds) }.joined(separator: " ")) s\(fill), median \(fmt(row.variantMedian)) s, CRIU/variant \(fmt(row.variantSpeedup))x, daemon CPU \(fmt(median(row.variant.map(\.daemonCPUSeconds)))) s, peak anon \(row.variant.map(\.daemonPeakAnonKiB).max() ?? 0) KiB\(serverCPU(row.variant))")
                }
            }
        }
        out.append("")
        out.append("targets")
        for t in targets {
            let mark = t.met.map { $0 ? "met" : "MISSED" } ?? "-"
            out.append("  \(pad(t.name, 26)) \(pad(t.measured, 14)) target \(pad(t.target, 14)) \(mark)")
        }
        if !failures.isEmpty {
            out.append("")
            out.append("scenarios that failed")
            for (name, why) in failures.sorted(by: { $0.key < $1.key }) { out.append("  \(name): \(why)") }
        }
        return out.joined(separator: "\n") + "\n"
    }
}

func fmt(_ v: Double) -> String {
    if v.isNaN { return "n/a" }
    if abs(v) >= 100 { return String(format: "%.0f", v) }
    if abs(v) >= 10 { return String(format: "%.1f", v) }
    return String(format: "%.2f", v)
}

private func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

private func serverCPU(_ runs: [CRIURestoreResult]) -> String {
    let cpu = runs.compactMap(\.pageServerCPUSeconds)
    return cpu.isEmpty ? "" : ", page server CPU \(fmt(median(cpu))) s"
}

private func kib(_ bytes: Int) -> String { bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB" }

private func latencyText(_ l: LatencySummary) -> String {
    "p50 \(fmt(l.p50)) us  p90 \(fmt(l.p90)) us  p99 \(fmt(l.p99)) us  max \(fmt(l.max)) us  (n=\(l.count))"
}

private func daemonText(_ d: DaemonResult) -> String {
    "CPU \(fmt(d.cpuSeconds)) s (user \(fmt(d.userSeconds)), sys \(fmt(d.systemSeconds))), peak anon \(d.peakAnonKiB) KiB, peak RSS \(d.peakRSSKiB) KiB; \(d.faults) faults served, \(d.pagesOnFault) pages on fault, \(d.pagesInBackground) in background"
}
