// STAND-IN, to be replaced by the real CRIUImages module (same public declarations as the agreed contract).

public let criuPageSize = 4096

public struct ImageError: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String
    public var problem: String
    public init(file: String, problem: String) {
        self.file = file
        self.problem = problem
    }
    public var description: String { "\(file): \(problem)" }
}

public struct PagemapFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let parent = PagemapFlags(rawValue: 1)
    public static let lazy = PagemapFlags(rawValue: 2)
    public static let present = PagemapFlags(rawValue: 4)
}

public struct VMA: Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    public var prot: UInt32
    public var flags: UInt32
    public var status: UInt32
    public init(start: UInt64, end: UInt64, prot: UInt32, flags: UInt32, status: UInt32) {
        self.start = start
        self.end = end
        self.prot = prot
        self.flags = flags
        self.status = status
    }
}

public enum PageData: Sendable, Hashable {
    case file(path: String, offset: UInt64)
    case remote
}

public struct LazyRun: Sendable, Hashable {
    public var address: UInt64
    public var pageCount: Int
    public var data: PageData
    public init(address: UInt64, pageCount: Int, data: PageData) {
        self.address = address
        self.pageCount = pageCount
        self.data = data
    }
}

public struct TaskEntry: Sendable, Hashable {
    public var pid: UInt32
    public var ppid: UInt32
    public var pgid: UInt32
    public var sid: UInt32
    public var threads: [UInt32]
    public init(pid: UInt32, ppid: UInt32, pgid: UInt32, sid: UInt32, threads: [UInt32]) {
        self.pid = pid
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
        self.threads = threads
    }
}

public struct ProcessImage: Sendable {
    public let pid: Int32
    public let vmas: [VMA]
    public let pagesID: UInt32
    public let lazyRuns: [LazyRun]
    public let eagerRuns: [LazyRun]
    public init(pid: Int32, vmas: [VMA], pagesID: UInt32, lazyRuns: [LazyRun], eagerRuns: [LazyRun]) {
        self.pid = pid
        self.vmas = vmas
        self.pagesID = pagesID
        self.lazyRuns = lazyRuns
        self.eagerRuns = eagerRuns
    }
}

public struct RunSpec: Sendable {
    public var address: UInt64
    public var pageCount: Int
    public var flags: PagemapFlags
    public var fill: @Sendable (_ pageAddress: UInt64, _ page: UnsafeMutableRawBufferPointer) -> Void
    public init(
        address: UInt64, pageCount: Int, flags: PagemapFlags,
        fill: @escaping @Sendable (_ pageAddress: UInt64, _ page: UnsafeMutableRawBufferPointer) -> Void
    ) {
        self.address = address
        self.pageCount = pageCount
        self.flags = flags
        self.fill = fill
    }
}

public struct ProcessSpec: Sendable {
    public var pid: UInt32
    public var ppid: UInt32
    public var vmas: [VMA]
    public var runs: [RunSpec]
    public init(pid: UInt32, ppid: UInt32, vmas: [VMA], runs: [RunSpec]) {
        self.pid = pid
        self.ppid = ppid
        self.vmas = vmas
        self.runs = runs
    }
}

public enum PagePattern {
    /// Word `w` of page `p`: `((p + 1) * 0x9E3779B97F4A7C15 ^ seed) + w * 0x100000001B3` (as in the treeproc fixture).
    public static func fill(seed: UInt64, pageIndex: UInt64, into: UnsafeMutableRawBufferPointer) {
        let base = ((pageIndex &+ 1) &* 0x9E37_79B9_7F4A_7C15) ^ seed
        for w in 0..<(into.count / 8) {
            into.storeBytes(of: (base &+ UInt64(w) &* 0x100_0000_01B3).littleEndian, toByteOffset: w * 8, as: UInt64.self)
        }
    }
}
