import Foundation
import Logging
import ServiceLifecycle

/// `lazy-pagesd serve` as a swift-service-lifecycle `Service`: run inside a `ServiceGroup`, which turns SIGTERM and
/// SIGINT into a graceful shutdown.
///
/// `run()` starts the service (control socket, metrics endpoint), says so through `started`, then waits for the
/// group's graceful shutdown (or cancellation); it then says `stopping` and runs `LazyPagesService.shutdown(timeout:)`
/// — no new jobs, running restores get `shutdownTimeout` seconds, the rest are cancelled — on a thread of its own
/// (it blocks for up to that timeout; blocking waits never run on Swift's cooperative pool), and returns when it is
/// done.
public struct ServeService: Service {
    public let service: LazyPagesService
    public let shutdownTimeout: Double
    private let logger: Logger
    private let started: @Sendable (LazyPagesService) -> Void
    private let stopping: @Sendable (LazyPagesService) -> Void

    /// - Parameters:
    ///   - started: called once the service accepts connections (systemd's READY=1 goes here).
    ///   - stopping: called when the shutdown begins, before running jobs are waited for (STOPPING=1).
    public init(
        _ service: LazyPagesService, shutdownTimeout: Double, logger: Logger,
        started: @escaping @Sendable (LazyPagesService) -> Void = { _ in },
        stopping: @escaping @Sendable (LazyPagesService) -> Void = { _ in }
    ) {
        self.service = service
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
        self.started = started
        self.stopping = stopping
    }

    public func run() async throws {
        service.start()
        started(service)
        do {
            try await gracefulShutdown()
            logger.notice("shutdown requested")
        } catch {
            // Cancelled (the group was cancelled, or another service failed): the jobs still end the same way.
            logger.notice("shutdown requested by cancellation")
        }
        stopping(service)
        let (service, timeout) = (service, shutdownTimeout)
        let cancelled = await Self.onOwnThread(named: "lazy-pages shutdown") { service.shutdown(timeout: timeout) }
        logger.notice("stopped", metadata: ["cancelled-jobs": "\(cancelled.count)"])
    }

    /// Runs a blocking `body` on a new thread and resumes with its result.
    private static func onOwnThread<T: Sendable>(named name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: body()) }
            thread.name = name
            thread.start()
        }
    }
}
