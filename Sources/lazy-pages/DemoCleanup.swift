import Dispatch
import Foundation
import RestoreSimulator

#if canImport(Glibc)
import Glibc
#endif

/// Removes the demo's image directory and kills its workloads when SIGINT or SIGTERM arrives (Ctrl-C, `kill`),
/// then ends the process by that signal, as if it had not been caught; `finish()` removes the directory on a
/// normal end. Output already printed is never lost: stdout is line-buffered and flushed before the end.
final class DemoCleanup: @unchecked Sendable {
    /// The directory to remove; nil with `--keep`.
    private let directory: String?
    private let lock = NSLock()
    private var simulation: RestoreSimulation?
    private var sources: [DispatchSourceSignal] = []

    init(directory: String?) { self.directory = directory }

    /// From now on SIGINT and SIGTERM clean up and end the demo.
    func install() {
        for signo in [SIGINT, SIGTERM] {
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { [self] in interrupted(by: signo) }
            source.resume()
            sources.append(source)
        }
    }

    /// Runs `body` (which starts `simulation`) so that a signal meanwhile waits for it, then kills what it started.
    func starting<R>(_ simulation: RestoreSimulation, _ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        self.simulation = simulation
        return try body()
    }

    /// The normal end: the directory goes (unless kept); signals are no longer caught.
    func finish() {
        lock.lock()
        defer { lock.unlock() }
        for source in sources { source.cancel() }
        removeDirectory()
    }

    private func interrupted(by signo: Int32) {
        lock.lock()  // held until the end: the main thread starts nothing more, and `finish()` waits
        simulation?.killAll()
        removeDirectoryWhileWritten()
        let name = signo == SIGINT ? "SIGINT" : "SIGTERM"
        let removed = directory.map { "; removed \($0)" } ?? ""
        fflush(nil)
        FileHandle.standardError.write(Data("\nlazy-pages demo: interrupted by \(name)\(removed)\n".utf8))
        // End by the signal itself, as an uncaught one would (the shell reports it so): pending on this thread
        // until unblocked here (the signal source's thread has it blocked).
        signal(signo, SIG_DFL)
        raise(signo)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signo)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        _exit(128 + signo)
    }

    /// The normal end, nothing else running: the directory and everything in it.
    private func removeDirectory() {
        guard let directory else { return }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Removes the directory while the main thread may still be writing into it (by path, creating the directory
    /// again if it is missing): it is renamed away and a plain file put in its place, so that every later write
    /// fails, then the renamed tree is removed, then the placeholder.
    private func removeDirectoryWhileWritten() {
        guard let directory else { return }
        let doomed = directory + ".removing"
        var fenced = false
        for _ in 0..<10 where !fenced {
            if rename(directory, doomed) == 0 { try? FileManager.default.removeItem(atPath: doomed) }
            let placeholder = open(directory, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if placeholder >= 0 {
                close(placeholder)
                fenced = true
            }
        }
        for _ in 0..<10 where FileManager.default.fileExists(atPath: doomed) {
            try? FileManager.default.removeItem(atPath: doomed)
        }
        if fenced { unlink(directory) }
    }
}
