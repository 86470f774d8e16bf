/// How one restored task ended.
public struct TaskReport: Sendable {
    /// The pid in the images (`pstree.img`).
    public var virtualPid: Int32
    /// The workload's real pid (0 for a zombie, which has no process).
    public var realPid: Int32
    /// The exit code, or minus the signal number if a signal ended it.
    public var exitStatus: Int32
    /// Exited 0, printed an `OK` line and no `FAIL` line, and did not time out (always true for a zombie).
    public var passed: Bool
    /// The workload's stdout lines (its result lines, and its children's), then its stderr lines prefixed
    /// `stderr: `, then any line the simulator adds (`simulator: ...`).
    public var output: [String]

    public init(virtualPid: Int32, realPid: Int32, exitStatus: Int32, passed: Bool, output: [String]) {
        self.virtualPid = virtualPid
        self.realPid = realPid
        self.exitStatus = exitStatus
        self.passed = passed
        self.output = output
    }
}

/// Every task of one simulated restore.
public struct SimulationReport: Sendable {
    public var tasks: [TaskReport]
    public var allPassed: Bool { !tasks.isEmpty && tasks.allSatisfy(\.passed) }

    public init(tasks: [TaskReport]) { self.tasks = tasks }
}
