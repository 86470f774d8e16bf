import ArgumentParser
import Foundation
import LazyPagesEngine
import LazyPagesService

/// The hand-over of a `lazy-pagesd serve` job whose daemon died: its guardian starts `lazy-pagesd adopt` as for a
/// standalone restore, but the job's uffds, sockets, journal and record are in systemd's descriptor store, and
/// systemd restarts the service (`Restart=on-failure`), which continues the job itself (`JobAdoption`). So the
/// successor only completes what the daemon had not stored yet (`ServeJobCompletion`: the uffds of processes the
/// journal names, a fork read but not recorded among them), tells the guardian "taken over" — the guardian then
/// exits without ending the processes, which wait on their faults (blocked, never served a zero page: the store
/// keeps every uffd open) — and exits.
///
/// It refuses (the guardian then ends the processes, as without a store) when nothing can restart the service: no
/// `NOTIFY_SOCKET` (the daemon was not systemd's) in the environment it inherited.
enum ServeJobHandover {
    static func leaveToTheServiceManager(journal: RestoreJournal, readyPipe: Int32) throws {
        guard let socket = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !socket.isEmpty else {
            printError("lazy-pagesd adopt: refused the restore (no-service-manager): a serve job's daemon died, but it "
                       + "was not run by systemd, which would restart it with the job's descriptors")
            throw ExitCode(GuardianLink.successorRefusedExitStatus)
        }
        do {
            let done = try ServeJobCompletion.complete(journal: journal, environment: ProcessInfo.processInfo.environment)
            printError("lazy-pagesd adopt: job \(done.jobID): \(done.storedUffds) uffds in systemd's store"
                       + (done.recordedEvents.map { ", \($0) events of the interrupted read recorded" } ?? ""))
        } catch {
            // The restarted service finds what is missing and ends the job's processes, as without this step.
            printError("lazy-pagesd adopt: a serve job's descriptors may be incomplete in systemd's store: \(error)")
        }
        var yes = UInt8(ascii: "A")
        _ = write(readyPipe, &yes, 1)
        close(readyPipe)
        printError("lazy-pagesd adopt: a serve job's daemon died; its descriptors are in systemd's store and the "
                   + "restarted service continues the job")
    }
}
