/// The control protocol of `lazy-pagesd serve` (see docs/control-protocol.md): one JSON object per line each way.
public enum ControlProtocol {
    /// The protocol version this build speaks; a request with another version is refused.
    public static let version = 1
    /// The longest request line the daemon reads (bytes, newline included).
    public static let maxMessageBytes = 64 << 10
    /// Where the daemon listens unless told otherwise (and where `lazy-pagesd.socket` puts it).
    public static let defaultSocketPath = "/run/lazy-pagesd/control.sock"
}

/// One request: `{"version":1,"op":"add","job":{...}}`, `{"version":1,"op":"status","id":"3"}`, ...
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable, CaseIterable {
        case add, list, status, wait, cancel
    }

    public var version: Int
    public var op: Operation
    /// The job to create (`add`).
    public var job: JobSpec?
    /// The job meant (`status`, `wait`, `cancel`).
    public var id: String?
    /// `wait`: give up after this many seconds (the reply then says the job is still running).
    public var timeoutSeconds: Double?

    public init(op: Operation, job: JobSpec? = nil, id: String? = nil, timeoutSeconds: Double? = nil) {
        version = ControlProtocol.version
        self.op = op
        self.job = job
        self.id = id
        self.timeoutSeconds = timeoutSeconds
    }
}

/// What a job restores: a front end, a page source, options.
public struct JobSpec: Codable, Sendable, Equatable {
    public enum FrontEnd: String, Codable, Sendable {
        /// `criu restore --lazy-pages`: `lazy-pages.socket` in `workDirectory`, pages from `imagesDirectory` (or
        /// from `pageServer`).
        case criu
        /// Firecracker's UFFD memory backend: listen on `socketPath`, pages from the snapshot `memoryFile`.
        case firecracker
    }

    /// A CRIU page server (`criu page-server --lazy-pages`, `lazy-pages page-server`).
    public struct PageServerAddress: Codable, Sendable, Equatable {
        public var address: String
        public var port: UInt16
        public init(address: String, port: UInt16) {
            self.address = address
            self.port = port
        }
    }

    public var frontEnd: FrontEnd
    public var workDirectory: String?
    public var imagesDirectory: String?
    public var pageServer: PageServerAddress?
    public var socketPath: String?
    public var memoryFile: String?
    /// Copy the remaining pages in the background (default true).
    public var backgroundFill: Bool?
    /// Pages delivered per fault, the faulting one first (default 1).
    public var faultAround: Int?
    /// Pages per background copy (default 64).
    public var fillChunk: Int?
    /// A name shown by `list` (free text, at most 128 bytes).
    public var name: String?
    /// Let members of the caller's group connect to the job's socket too (mode 0660, the caller's primary gid);
    /// by default only the caller (and root) may (mode 0600).
    public var socketGroupAccess: Bool?

    public init(
        frontEnd: FrontEnd, workDirectory: String? = nil, imagesDirectory: String? = nil,
        pageServer: PageServerAddress? = nil, socketPath: String? = nil, memoryFile: String? = nil,
        backgroundFill: Bool? = nil, faultAround: Int? = nil, fillChunk: Int? = nil, name: String? = nil,
        socketGroupAccess: Bool? = nil
    ) {
        self.socketGroupAccess = socketGroupAccess
        self.frontEnd = frontEnd
        self.workDirectory = workDirectory
        self.imagesDirectory = imagesDirectory
        self.pageServer = pageServer
        self.socketPath = socketPath
        self.memoryFile = memoryFile
        self.backgroundFill = backgroundFill
        self.faultAround = faultAround
        self.fillChunk = fillChunk
        self.name = name
    }
}

/// Where a job is in its life.
public enum JobState: String, Codable, Sendable, CaseIterable {
    /// Its socket listens; no process has been handed over yet.
    case listening
    /// Serving pages.
    case running
    /// Every process got all its pages (or exited); the VM exited.
    case completed
    /// The restore failed (`reason` says why).
    case failed
    /// Cancelled by a client or by the daemon's shutdown (`reason` says which).
    case cancelled

    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// A job as the daemon reports it.
public struct JobInfo: Codable, Sendable, Equatable {
    public var id: String
    public var owner: UInt32
    public var spec: JobSpec
    public var state: JobState
    /// Why it failed or was cancelled.
    public var reason: String?
    /// The socket the restorer / Firecracker connects to.
    public var socket: String
    /// 4 KiB pages delivered (copied or zero-filled) and expected (what the images hold for the announced tasks).
    public var pagesHome: Int
    public var pagesExpected: Int
    public var faults: Int
    public var eagainRetries: Int
    public var tasks: Int
    /// Seconds since the first process was handed over (to the end once it ended).
    public var elapsedSeconds: Double
    /// Every engine counter by name.
    public var counters: [String: Int]

    public init(
        id: String, owner: UInt32, spec: JobSpec, state: JobState, reason: String?, socket: String, pagesHome: Int,
        pagesExpected: Int, faults: Int, eagainRetries: Int, tasks: Int, elapsedSeconds: Double,
        counters: [String: Int]
    ) {
        self.id = id
        self.owner = owner
        self.spec = spec
        self.state = state
        self.reason = reason
        self.socket = socket
        self.pagesHome = pagesHome
        self.pagesExpected = pagesExpected
        self.faults = faults
        self.eagainRetries = eagainRetries
        self.tasks = tasks
        self.elapsedSeconds = elapsedSeconds
        self.counters = counters
    }
}

/// One reply: `{"version":1,"ok":true,"job":{...}}` or `{"version":1,"ok":false,"code":"not-found","error":"..."}`.
public struct ControlReply: Codable, Sendable, Equatable {
    /// Why a request was refused (stable strings scripts may match).
    public enum ErrorCode: String, Codable, Sendable {
        case malformed = "malformed"
        case unsupportedVersion = "unsupported-version"
        case tooLarge = "too-large"
        case invalidJob = "invalid-job"
        case notFound = "not-found"
        case tooManyJobs = "too-many-jobs"
        case shuttingDown = "shutting-down"
        case startFailed = "start-failed"
        case alreadyFinished = "already-finished"
        case timedOut = "timed-out"
        case tooManyConnections = "too-many-connections"
        case tooManyWaits = "too-many-waits"
        case notAllowed = "not-allowed"
    }

    public var version: Int
    public var ok: Bool
    public var code: ErrorCode?
    public var error: String?
    public var job: JobInfo?
    public var jobs: [JobInfo]?

    public static func success(job: JobInfo? = nil, jobs: [JobInfo]? = nil) -> ControlReply {
        ControlReply(version: ControlProtocol.version, ok: true, code: nil, error: nil, job: job, jobs: jobs)
    }

    public static func failure(_ code: ErrorCode, _ message: String, job: JobInfo? = nil) -> ControlReply {
        ControlReply(version: ControlProtocol.version, ok: false, code: code, error: message, job: job, jobs: nil)
    }
}
