import Dispatch
import Foundation
import RestoreSimulator

#if canImport(Glibc)
import Glibc
#endif

/// Removes the demo's image directory and kills its workloads when SIGINT or SIGTERM arrives (Ctrl-C, `kill`),
/// then ends the process by that signal, as if it had not been caught; `finish()` removes the directory on a
/// normal end. Output already printed is never lost: stdout is line-buffered and flushed before the end.
///
/// No file may appear in the directory after the signal's removal: the image set is written through
/// `/proc/self/fd/N` of the directory (a removed directory takes no new entries, and that path never creates it
/// again), and every other step that creates entries in it runs inside `guarded`, which the signal waits for.
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

    /// Runs `body` with the signals' cleanup waiting: for steps that create files in the directory or start
    /// processes.
    func guarded<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Inside `guarded`: the restore whose workloads a signal kills.
    func watch(_ simulation: RestoreSimulation) { self.simulation = simulation }

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
        removeDirectory()
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

    /// The directory and everything in it; retried while a file being written through `/proc/self/fd/N` appears
    /// between emptying it and removing it.
    private func removeDirectory() {
        guard let directory else { return }
        for _ in 0..<20 where FileManager.default.fileExists(atPath: directory) {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}
