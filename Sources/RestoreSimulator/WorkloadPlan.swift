import CRIUImages

/// The plan file `lp-workload` reads (format documented at the top of `Sources/lp-workload/main.c`):
/// the task's VMAs, its lazy runs (the daemon's to deliver) and its eager runs (the restorer fills them).
struct WorkloadPlan {
    var text: String

    init(process: ProcessImage) {
        var files: [String] = []
        func fileIndex(_ path: String) -> Int {
            if let i = files.firstIndex(of: path) { return i }
            files.append(path)
            return files.count - 1
        }
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        var body: [String] = []
        for vma in process.vmas {
            body.append("vma \(hex(vma.start)) \(hex(vma.end)) \(vma.prot) \(vma.flags)")
        }
        for (kind, runs) in [("lazy", process.lazyRuns), ("eager", process.eagerRuns)] {
            for run in runs {
                switch run.data {
                case .file(let path, let offset):
                    body.append("\(kind) \(hex(run.address)) \(run.pageCount) \(fileIndex(path)) \(hex(offset))")
                case .remote where kind == "lazy":
                    body.append("lazy \(hex(run.address)) \(run.pageCount) remote")
                case .remote:
                    continue  // an eager run without local data: nothing the restorer could fill
                }
            }
        }
        var lines = ["# lp-workload plan (written by RestoreSimulator)", "task \(process.pid)"]
        for (i, path) in files.enumerated() { lines.append("file \(i) \(path)") }
        text = (lines + body).joined(separator: "\n") + "\n"
    }
}
