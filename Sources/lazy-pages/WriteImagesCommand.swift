import ArgumentParser
import RestoreSimulator

/// `lazy-pages write-images`: writes a made-up CRIU image set for restore-sim, the stress loop and benchmarks.
struct WriteImages: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write-images",
        abstract: "Write a CRIU image set (inventory, pstree, core, mm, pagemap, pages) of made-up tasks whose pages follow "
            + "PagePattern, for `restore-sim` and `Scripts/stress`.")

    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Directory to write (created if missing).")
    var directory: String

    @Option(help: "Number of tasks (pids 100, 101, ...; the first is the parent of the others).")
    var tasks = 2

    @Option(help: "Memory per task: bytes, or with a K/M/G suffix.")
    var size = "4M"

    @Option(help: "mixed (three VMAs: lazy, eager, holes), many-vmas (one-page VMAs with gaps), sparse (one huge VMA with scattered lazy pages), lazy-zeros (one VMA, all lazy zero pages, the pages file all holes).")
    var layout = "mixed"

    @Option(help: "For many-vmas: VMAs per task.")
    var vmas = 5000

    @Option(help: "Seed for the sparse layout's page positions.")
    var seed: UInt64 = 1

    @Option(help: "Write the last N tasks as zombies, as CRIU dumps them (dead in core-<pid>.img, no mm-/pagemap- images); restore-sim announces them with a negative pid.")
    var zombies = 0

    func validate() throws {
        guard tasks >= 1 && tasks <= 10_000 else { throw ValidationError("--tasks must be 1...10000") }
        guard parseByteSize(size) != nil else { throw ValidationError("--size: cannot read '\(size)' (e.g. 64M, 1G)") }
        guard ImageLayout(rawValue: layout) != nil else {
            throw ValidationError("--layout must be one of \(ImageLayout.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard vmas >= 1 && vmas <= 60_000 else { throw ValidationError("--vmas must be 1...60000") }
        guard zombies >= 0 && zombies < tasks else { throw ValidationError("--zombies must be 0...\(tasks - 1) (the first task is alive)") }
    }

    func run() throws {
        let layout = ImageLayout(rawValue: layout)!
        try layout.write(
            to: directory, tasks: tasks, bytesPerTask: parseByteSize(size)!, vmaCount: vmas, seed: seed, zombies: zombies)
        print("write-images: \(layout.rawValue), \(tasks) tasks\(zombies > 0 ? " (\(zombies) zombies)" : ""), \(size) each, in \(directory)")
    }
}
