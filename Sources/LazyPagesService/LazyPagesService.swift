import Foundation
import LazyPagesControl
import LinuxSupport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `lazy-pagesd serve`: the control socket, the jobs, the metrics endpoint, and the graceful shutdown.
///
/// Use: `init` (binds everything), `start()`, then — typically after SIGTERM — `shutdown(timeout:)`.
public final class LazyPagesService: @unchecked Sendable {
    public struct Options: Sendable {
        /// Where to bind the control socket (ignored when `activatedSocket` is given).
        public var controlSocketPath = ControlProtocol.defaultSocketPath
        /// A listening socket handed over by systemd (socket activation); its mode and owner are systemd's.
        public var activatedSocket: Int32?
        /// The group the control socket is given (its mode is 0660: owner and group may connect).
        public var socketGroup: gid_t?
        /// `host:port` for Prometheus scrapes; nil for none.
        public var metricsHost: String?
        public var metricsPort: UInt16 = 0
        /// Export per-job series (`lazy_pages_job_*{job}`) — every user's job ids and progress, to whoever can reach
        /// the endpoint. Off by default: the endpoint has no client identity, so only totals are served.
        public var metricsPerJob = false
        public var limits = ServiceLimits()
        public var policy = JobPolicy()
        /// Called with `statusLine` whenever a job was added or ended (for systemd's STATUS=).
        public var statusChanged: (@Sendable (String) -> Void)?
        /// Where every job's descriptors, journal and record are kept so that a restarted daemon re-adopts the
        /// job (systemd's descriptor store); nil: nowhere (a daemon that dies has its jobs' processes ended).
        public var descriptorStore: (any DescriptorStore)?
        /// Descriptors that came back from the store at start-up (`LISTEN_FDS` beyond the control socket), by name,
        /// already put back at their numbers (`placeStoredDescriptors`).
        public var storedDescriptors: [(name: String, descriptor: Int32)] = []
        /// Jobs of `storedDescriptors` that could not all be put back at their numbers.
        public var unplacedJobs: Set<String> = []
        public init() {}
    }

    public let options: Options
    private let logger: Logger
    private let registry: JobRegistry
    private let server: ControlServer
    private let listener: Int32
    private let ownsSocketPath: Bool
    private let metrics: MetricsEndpoint?

    /// The control socket's path ("(activated)" when systemd handed it over).
    public var controlSocketDescription: String {
        options.activatedSocket == nil ? options.controlSocketPath : "(socket activation)"
    }

    /// The port metrics are served on, if they are.
    public var metricsPort: UInt16? { metrics?.port }

    public init(options: Options, logger: Logger) throws {
        self.options = options
        self.logger = logger
        let registry = JobRegistry(limits: options.limits, store: options.descriptorStore, logger: logger)
        self.registry = registry
        if let statusChanged = options.statusChanged {
            registry.onChange = { statusChanged(Self.statusLine(of: registry)) }
        }
        if let fd = options.activatedSocket {
            listener = fd
            ownsSocketPath = false
        } else {
            listener = try Self.bindControlSocket(options.controlSocketPath, group: options.socketGroup)
            ownsSocketPath = true
        }
        do {
            server = try ControlServer(
                listener: listener, handler: RequestHandler(registry: registry, policy: options.policy, logger: logger),
                limits: options.limits, logger: logger)
            if let host = options.metricsHost {
                let serviceMetrics = ServiceMetrics(jobs: registry, perJob: options.metricsPerJob)
                metrics = try MetricsEndpoint(host: host, port: options.metricsPort, logger: logger) {
                    serviceMetrics.render()
                }
            } else {
                metrics = nil
            }
        } catch {
            if ownsSocketPath {
                unlink(options.controlSocketPath)
                close(listener)
            }
            throw error
        }
    }

    /// Binds the control socket with mode 0660 from the start (umask 0117 around `bind`), so that it is never
    /// reachable by others, not even for a moment; a stale socket file is replaced.
    static func bindControlSocket(_ path: String, group: gid_t?) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServiceError("socket(AF_UNIX): \(SystemCallError.reason(errno))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw ServiceError("control socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else {
                close(fd)
                throw ServiceError("\(path) exists and is not a socket; not replacing it")
            }
            unlink(path)
        }
        let previous = umask(0o117)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(previous)
        guard bound == 0 else {
            let reason = SystemCallError.reason(errno)
            close(fd)
            throw ServiceError("cannot bind the control socket \(path): \(reason)")
        }
        guard chmod(path, 0o660) == 0, group.map({ chown(path, uid_t.max, $0) == 0 }) ?? true else {
            let reason = SystemCallError.reason(errno)
            close(fd)
            unlink(path)
            throw ServiceError("cannot set the mode or group of \(path): \(reason)")
        }
        guard listen(fd, 64) == 0 else {
            let reason = SystemCallError.reason(errno)
            close(fd)
            unlink(path)
            throw ServiceError("cannot listen on \(path): \(reason)")
        }
        return fd
    }

    /// Puts descriptors that came back from the store at their old numbers (see `StoredJobs`); call before
    /// anything else opens a descriptor.
    public static func placeStoredDescriptors(_ passed: [(name: String, descriptor: Int32)])
        -> (passed: [(name: String, descriptor: Int32)], unplacedJobs: Set<String>)
    {
        let (placed, unplaced) = StoredJobs.placeAtOriginalNumbers(passed)
        return (placed, unplaced)
    }

    /// The number of jobs re-adopted from the store at start (continued or ended).
    public private(set) var adoptedJobs = 0

    public func start() {
        let idFile = options.storedDescriptors.first { $0.name == JobRegistry.nextIDName }?.descriptor
        registry.keepIDs(inherited: idFile)
        if !options.storedDescriptors.isEmpty {
            var stored = StoredJobs(options.storedDescriptors)
            stored.unplaced = options.unplacedJobs
            adoptedJobs = stored.jobs.count
            JobAdoption.adoptAll(stored, registry: registry, policy: options.policy, logger: logger)
        }
        server.start()
        metrics?.start()
        logger.info("serving", metadata: [
            "control-socket": "\(controlSocketDescription)",
            "metrics": "\(metrics.map { "\($0.host):\($0.port)" } ?? "off")",
            "jobs-per-uid": "\(options.limits.activeJobsPerUID)",
            "connections-per-uid": "\(options.limits.connectionsPerUID)",
            "allowed-page-servers": "\(options.policy.allowedPageServers.map(\.description).joined(separator: ","))",
        ])
    }

    /// Counts of jobs by state, for STATUS= lines.
    public var statusLine: String { Self.statusLine(of: registry) }

    private static func statusLine(of registry: JobRegistry) -> String {
        let jobs = registry.jobs(for: nil)
        let running = jobs.filter { !$0.isFinished }.count
        return "\(running) jobs running, \(jobs.count - running) ended"
    }

    /// The graceful shutdown: no new connections or jobs; running restores get `timeout` seconds to finish, then
    /// the rest are cancelled. Every job's fate is logged. Returns the jobs that had to be cancelled.
    @discardableResult
    public func shutdown(timeout: Double) -> [String] {
        registry.stopAccepting()
        server.stopAccepting()
        if ownsSocketPath { unlink(options.controlSocketPath) }
        close(listener)
        let running = registry.jobs(for: nil).filter { !$0.isFinished }
        logger.notice("shutting down: waiting for running jobs", metadata: [
            "running": "\(running.count)", "timeout-seconds": "\(timeout)",
            "jobs": "\(running.map(\.id).joined(separator: ","))",
        ])
        let left = registry.waitForRunningJobs(until: Date(timeIntervalSinceNow: timeout))
        for job in left {
            logger.warning("shutdown timeout: cancelling job", metadata: ["job": "\(job.id)", "owner": "\(job.owner.uid)"])
            job.cancel(reason: "the daemon shut down before the restore finished (--shutdown-timeout \(timeout) s)")
        }
        for job in left where !job.wait(until: Date(timeIntervalSinceNow: 10)) {
            logger.critical("job did not stop after cancel; abandoning it at exit", metadata: ["job": "\(job.id)"])
        }
        for job in registry.jobs(for: nil) {
            let (state, reason) = job.state
            logger.info("job at shutdown", metadata: [
                "job": "\(job.id)", "owner": "\(job.owner.uid)", "state": "\(state.rawValue)",
                "reason": "\(reason ?? "-")",
            ])
        }
        // Let waiting clients read their replies.
        server.closeConnections(waitingAtMost: 2)
        return left.map(\.id)
    }
}

extension LazyPagesService {
    /// Whether a name passed in `LISTEN_FDNAMES` is one of a stored job's (`lpj.ID.KIND`), not a socket's.
    public static func isStoredJobName(_ name: String) -> Bool {
        JobParking.parse(name) != nil || name == JobRegistry.nextIDName
    }
}
