/// A CRIU image directory (`criu dump -D DIR`), opened for a lazy-pages daemon: `inventory.img` and
/// `pstree.img` are read and validated up front; each task's memory images on ``process(pid:)``.
public struct ImageSet: Sendable {
    /// The image directory as given (without trailing slashes).
    public let directory: String
    /// The tasks of `pstree.img`, in file order.
    public let tasks: [TaskEntry]
    /// `inventory_entry.img_version`.
    public let imageVersion: UInt32

    /// Opens the image set in `directory`, reading and validating `inventory.img` and `pstree.img`
    /// (at least one task, no duplicate or zero pids).
    public init(directory: String) throws(ImageError) {
        var directory = directory
        while directory.count > 1 && directory.hasSuffix("/") { directory.removeLast() }
        self.directory = directory

        let inventoryPath = "\(directory)/inventory.img"
        let inventory = try ImageFile(path: inventoryPath, kind: .inventory)
        guard !inventory.messages.isEmpty else {
            throw ImageError(file: inventoryPath, problem: "no inventory_entry (the file has no messages)")
        }
        imageVersion = try inventory.decode(Criu_inventory_entry.self, at: 0, as: "inventory_entry").imgVersion

        let pstreePath = "\(directory)/pstree.img"
        let pstree = try ImageFile(path: pstreePath, kind: .pstree)
        var tasks: [TaskEntry] = []
        var seen = Set<UInt32>()
        for index in pstree.messages.indices {
            let raw = try pstree.decode(Criu_pstree_entry.self, at: index, as: "pstree_entry")
            guard raw.pid != 0 else { throw ImageError(file: pstreePath, problem: "task \(index) has pid 0") }
            guard seen.insert(raw.pid).inserted else {
                throw ImageError(file: pstreePath, problem: "pid \(raw.pid) appears twice")
            }
            tasks.append(TaskEntry(pid: raw.pid, ppid: raw.ppid, pgid: raw.pgid, sid: raw.sid, threads: raw.threads))
        }
        guard !tasks.isEmpty else { throw ImageError(file: pstreePath, problem: "no tasks") }
        self.tasks = tasks
    }

    /// The task with this pid, if `pstree.img` lists it.
    public func task(pid: Int32) -> TaskEntry? {
        guard pid > 0 else { return nil }
        return tasks.first { $0.pid == UInt32(pid) }
    }

    /// Reads and validates the memory images of task `pid`: `mm-<pid>.img`, `pagemap-<pid>.img`, the size of
    /// its pages file, and — for `PE_PARENT` entries — the parent image sets' pagemaps and pages files. With
    /// `lazyPages` ``LazyPageSource/pageServer`` every `LAZY` page is the page server's (see ``ProcessImage``).
    public func process(pid: Int32, lazyPages: LazyPageSource = .images) throws(ImageError) -> ProcessImage {
        guard task(pid: pid) != nil else {
            throw ImageError(
                file: "\(directory)/pstree.img",
                problem: "pid \(pid) is not in pstree (tasks: \(tasks.map { String($0.pid) }.joined(separator: ", ")))")
        }
        return try ProcessImage(directory: directory, pid: pid, lazyPages: lazyPages)
    }

    /// Path of task `pid`'s `core-<pid>.img`.
    public func corePath(pid: Int32) -> String { "\(directory)/core-\(pid).img" }

    /// The state `core-<pid>.img` records for task `pid`; nil when the set has no core image for it (image sets
    /// written without one, like the simulator's older ones: such a task counts as alive).
    public func state(ofTask pid: Int32) throws(ImageError) -> TaskState? {
        let path = corePath(pid: pid)
        guard case .regular = try fileStatus(path) else {
            guard entryExists(path) else { return nil }
            throw ImageError(file: path, problem: "not a regular file")
        }
        let file = try ImageFile(path: path, kind: .core)
        guard file.messages.count == 1 else {
            throw ImageError(file: path, problem: "expected one core_entry, found \(file.messages.count) messages")
        }
        let core = try file.decode(Criu_core_entry.self, at: 0, as: "core_entry")
        guard core.hasTc, core.tc.hasTaskState else {
            throw ImageError(file: path, problem: "core_entry has no task_core_entry.task_state")
        }
        guard let state = TaskState(rawValue: core.tc.taskState) else {
            throw ImageError(file: path, problem: "unknown task_state \(core.tc.taskState)")
        }
        return state
    }

    /// Whether task `pid` has memory images to serve: every task but one its core image says is dead (a zombie).
    public func hasMemory(pid: Int32) throws(ImageError) -> Bool {
        try state(ofTask: pid)?.hasMemory ?? true
    }
}
