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

/// What a job restores: a CRIU or a Firecracker restore, each with exactly the fields it needs. On the wire one
/// flat object: `{"frontEnd":"criu","imagesDirectory":"/srv/img","workDirectory":"/srv/work",...}` or
/// `{"frontEnd":"firecracker","socketPath":"/run/vm.sock","memoryFile":"/srv/mem",...}`; a field of the other
/// kind of job is refused by name.
public enum JobSpec: Codable, Sendable, Equatable {
    /// `criu restore --lazy-pages`.
    case criu(CRIUJob)
    /// Firecracker's UFFD memory backend.
    case firecracker(FirecrackerJob)

    public enum FrontEnd: String, Codable, Sendable {
        case criu, firecracker
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

    /// The engine options and name every job may have.
    public struct Options: Sendable, Equatable {
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

        public init(backgroundFill: Bool? = nil, faultAround: Int? = nil, fillChunk: Int? = nil, name: String? = nil,
                    socketGroupAccess: Bool? = nil) {
            self.backgroundFill = backgroundFill
            self.faultAround = faultAround
            self.fillChunk = fillChunk
            self.name = name
            self.socketGroupAccess = socketGroupAccess
        }
    }

    /// `lazy-pages.socket` in `workDirectory` (default: `imagesDirectory`), pages from `imagesDirectory` or from
    /// `pageServer`.
    public struct CRIUJob: Sendable, Equatable {
        public var imagesDirectory: String
        public var workDirectory: String?
        public var pageServer: PageServerAddress?
        public var options: Options

        public init(imagesDirectory: String, workDirectory: String? = nil, pageServer: PageServerAddress? = nil,
                    options: Options = Options()) {
            self.imagesDirectory = imagesDirectory
            self.workDirectory = workDirectory
            self.pageServer = pageServer
            self.options = options
        }
    }

    /// Listen on `socketPath`, pages from the snapshot `memoryFile`.
    public struct FirecrackerJob: Sendable, Equatable {
        public var socketPath: String
        public var memoryFile: String
        public var options: Options

        public init(socketPath: String, memoryFile: String, options: Options = Options()) {
            self.socketPath = socketPath
            self.memoryFile = memoryFile
            self.options = options
        }
    }

    public var frontEnd: FrontEnd {
        switch self {
        case .criu: .criu
        case .firecracker: .firecracker
        }
    }

    public var options: Options {
        switch self {
        case .criu(let job): job.options
        case .firecracker(let job): job.options
        }
    }

    public var name: String? { options.name }

    private enum Key: String, CodingKey {
        case frontEnd, workDirectory, imagesDirectory, pageServer, socketPath, memoryFile
        case backgroundFill, faultAround, fillChunk, name, socketGroupAccess
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        func refuse(_ message: String) -> DecodingError {
            .dataCorrupted(.init(codingPath: c.codingPath, debugDescription: message))
        }
        func present(_ keys: [Key]) throws -> [Key] { try keys.filter { try c.decodeNil(forKey: $0) == false } }
        let options = Options(
            backgroundFill: try c.decodeIfPresent(Bool.self, forKey: .backgroundFill),
            faultAround: try c.decodeIfPresent(Int.self, forKey: .faultAround),
            fillChunk: try c.decodeIfPresent(Int.self, forKey: .fillChunk),
            name: try c.decodeIfPresent(String.self, forKey: .name),
            socketGroupAccess: try c.decodeIfPresent(Bool.self, forKey: .socketGroupAccess))
        switch try c.decode(FrontEnd.self, forKey: .frontEnd) {
        case .criu:
            let foreign = try present([.socketPath, .memoryFile].filter(c.contains))
            guard foreign.isEmpty else {
                throw refuse("\"socketPath\" and \"memoryFile\" belong to firecracker jobs")
            }
            guard let images = try c.decodeIfPresent(String.self, forKey: .imagesDirectory) else {
                throw refuse("a criu job needs \"imagesDirectory\"")
            }
            self = .criu(CRIUJob(
                imagesDirectory: images, workDirectory: try c.decodeIfPresent(String.self, forKey: .workDirectory),
                pageServer: try c.decodeIfPresent(PageServerAddress.self, forKey: .pageServer), options: options))
        case .firecracker:
            let foreign = try present([.workDirectory, .imagesDirectory, .pageServer].filter(c.contains))
            guard foreign.isEmpty else {
                throw refuse("\"workDirectory\", \"imagesDirectory\" and \"pageServer\" belong to criu jobs")
            }
            guard let socket = try c.decodeIfPresent(String.self, forKey: .socketPath) else {
                throw refuse("a firecracker job needs \"socketPath\"")
            }
            guard let memory = try c.decodeIfPresent(String.self, forKey: .memoryFile) else {
                throw refuse("a firecracker job needs \"memoryFile\"")
            }
            self = .firecracker(FirecrackerJob(socketPath: socket, memoryFile: memory, options: options))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(frontEnd, forKey: .frontEnd)
        switch self {
        case .criu(let job):
            try c.encode(job.imagesDirectory, forKey: .imagesDirectory)
            try c.encodeIfPresent(job.workDirectory, forKey: .workDirectory)
            try c.encodeIfPresent(job.pageServer, forKey: .pageServer)
        case .firecracker(let job):
            try c.encode(job.socketPath, forKey: .socketPath)
            try c.encode(job.memoryFile, forKey: .memoryFile)
        }
        try c.encodeIfPresent(options.backgroundFill, forKey: .backgroundFill)
        try c.encodeIfPresent(options.faultAround, forKey: .faultAround)
        try c.encodeIfPresent(options.fillChunk, forKey: .fillChunk)
        try c.encodeIfPresent(options.name, forKey: .name)
        try c.encodeIfPresent(options.socketGroupAccess, forKey: .socketGroupAccess)
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
    /// Why it failed or was cancelled, and whether its processes were ended (a restore that cannot deliver every
    /// page kills its processes rather than leave them on incomplete memory).
    public var reason: String?
    /// The socket the restorer / Firecracker connects to.
    public var socket: String
    /// 4 KiB pages copied into the announced tasks, and expected (what the images hold for them). Pages copied into
    /// forked children are in `counters` (`pagesCopiedToForks`), not here.
    public var pagesHome: Int
    public var pagesExpected: Int
    public var faults: Int
    public var eagainRetries: Int
    public var tasks: Int
    /// Seconds since the first process was handed over (to the end once it ended).
    public var elapsedSeconds: Double
    /// Every engine counter by name.
    public var counters: [String: Int]
    /// How many times a restarted daemon re-adopted this job (systemd's descriptor store kept it across a crash or
    /// SIGKILL of the daemon), and when it last did (Unix time, seconds). Absent when it never was.
    public var restarts: Int?
    public var lastAdoptedAt: Double?

    public init(
        id: String, owner: UInt32, spec: JobSpec, state: JobState, reason: String?, socket: String, pagesHome: Int,
        pagesExpected: Int, faults: Int, eagainRetries: Int, tasks: Int, elapsedSeconds: Double,
        counters: [String: Int], restarts: Int? = nil, lastAdoptedAt: Double? = nil
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
        self.restarts = restarts
        self.lastAdoptedAt = lastAdoptedAt
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
