/// What `lazy-pages restore-sim` printed: one `task V (pid P) exit S: passed|FAILED` line per task, then its lines.
public struct RestoreSimOutput {
    public var taskStatuses: [Int32] = []
    public var wrongPageLines: [String] = []
    public var timedOut = false
    public var text: String

    public init(_ text: String) {
        self.text = text
        for line in text.split(separator: "\n") {
            if line.hasPrefix("task "), let range = line.range(of: " exit "),
                let end = line[range.upperBound...].firstIndex(of: ":"),
                let status = Int32(line[range.upperBound..<end])
            {
                taskStatuses.append(status)
            }
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("FAIL") { wrongPageLines.append(String(trimmed)) }
            if line.contains("simulator: timed out") { timedOut = true }
        }
    }
}
