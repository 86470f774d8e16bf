#if canImport(Glibc)
import Glibc
import LinuxSupport
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The symlink-free absolute path of `path`, or nil if it cannot be resolved (e.g. `ELOOP`).
private func canonicalPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// Resolves `PE_PARENT` pages of one process through its chain of parent image sets: each set's `parent`
/// entry (usually a symlink relative to the set's directory) leads to the previous dump, whose
/// `pagemap-<pid>.img` says where the page is — in that set's pages file, or again in its parent.
struct ParentChain {
    /// Longest chain followed before giving up (guards against `parent` links forming a cycle).
    static let maxDepth = 64

    let pid: Int32
    /// `levels[0]` is the process's own pagemap; `levels[k]` that of the k-th ancestor, loaded on first use.
    private var levels: [PagemapFile]
    /// Canonical paths of the directories in `levels`, to detect `parent` links that form a cycle.
    private var canonicalDirectories: Set<String>

    init(pid: Int32, pagemap: PagemapFile) {
        self.pid = pid
        self.levels = [pagemap]
        self.canonicalDirectories = [canonicalPath(pagemap.directory) ?? pagemap.directory]
    }

    /// Appends runs covering `[address, end)` — pages that entry `entryNumber` of the level-`level` pagemap
    /// marks `PE_PARENT` — each pointing into the pages file of the ancestor set that holds the bytes.
    mutating func resolve(
        address: UInt64, end: UInt64, level: Int, entryNumber: Int, into runs: inout [LazyRun]
    ) throws(ImageError) {
        let child = levels[level]
        let parent = try parentPagemap(of: level, entryNumber: entryNumber)
        let page = UInt64(basePageSize)
        var cursor = address
        while cursor < end {
            guard let index = parent.entryIndex(containing: cursor) else {
                throw ImageError(
                    file: child.path,
                    problem: "PE_PARENT page \(hex(cursor)) of entry \(entryNumber) is not present in the parent"
                        + " image set: \(parent.path) has no entry for it")
            }
            let entry = parent.entries[index]
            let chunkEnd = min(end, entry.end)
            if entry.flags.contains(.present) {
                runs.append(
                    LazyRun(
                        address: cursor, pageCount: Int((chunkEnd - cursor) / page),
                        data: .file(
                            path: parent.pagesPath, offset: parent.fileOffsets[index] + (cursor - entry.vaddr))))
            } else if entry.flags.contains(.parent) {
                try resolve(address: cursor, end: chunkEnd, level: level + 1, entryNumber: index, into: &runs)
            } else {
                throw ImageError(
                    file: child.path,
                    problem: "PE_PARENT page \(hex(cursor)) of entry \(entryNumber) is not present in the parent"
                        + " image set: entry \(index) of \(parent.path) has no data (flags"
                        + " \(hex(entry.flags.rawValue)))")
            }
            cursor = chunkEnd
        }
    }

    private mutating func parentPagemap(of level: Int, entryNumber: Int) throws(ImageError) -> PagemapFile {
        if level + 1 < levels.count { return levels[level + 1] }
        let child = levels[level]
        let parentDirectory = child.directory + "/parent"
        guard entryExists(parentDirectory) else {
            throw ImageError(
                file: child.path,
                problem: "entry \(entryNumber) at \(hex(child.entries[entryNumber].vaddr)) is PE_PARENT but there"
                    + " is no parent image set (\(parentDirectory) does not exist)")
        }
        guard case .directory = try fileStatus(parentDirectory) else {
            throw ImageError(file: parentDirectory, problem: "parent link does not lead to a directory")
        }
        guard let canonical = canonicalPath(parentDirectory), canonicalDirectories.insert(canonical).inserted else {
            throw ImageError(
                file: parentDirectory, problem: "parent link cycle: the chain of parent image sets loops back")
        }
        guard level + 1 <= Self.maxDepth else {
            throw ImageError(
                file: parentDirectory, problem: "parent chain deeper than \(Self.maxDepth) sets (a cycle?)")
        }
        let pagemap = try PagemapFile(directory: parentDirectory, pid: pid)
        levels.append(pagemap)
        return pagemap
    }
}
