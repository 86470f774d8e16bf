import RestoreSimulator

/// Every task of a simulated restore: its virtual pid, exit status and output, for a failing test's message.
public func describe(_ report: SimulationReport) -> String {
    report.tasks.map { "task \($0.virtualPid) status \($0.exitStatus):\n  " + $0.output.joined(separator: "\n  ") }
        .joined(separator: "\n")
}
