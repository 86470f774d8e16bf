import ArgumentParser
import Foundation
import LazyPagesEngine
import LazyPagesService

/// The hand-over of a `lazy-pagesd serve` job whose daemon died: its guardian starts `lazy-pagesd adopt` as for a
/// standalone restore, but the job's uffds, sockets, journal and record are in systemd's descriptor store, and
/// systemd restarts the service (`Restart=on-failure`), which continues the job itself (`JobAdoption`). So the
/// successor only tells the guardian "taken over" — the guardian then exits without ending the processes, which
/// wait on their faults (blocked, never served a zero page: the store keeps every uffd open) — and exits.
///
/// It refuses (the guardian then ends the processes, as without a store) when nothing can restart the service: no
/// `NOTIFY_SOCKET` (the daemon was not systemd's) in the environment it inherited.
enum ServeJobHandover {
    static func leaveToTheServiceManager(readyPipe: Int32) throws {
        guard let socket = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !socket.isEmpty else {
            printError("lazy-pagesd adopt: refused the restore (no-service-manager): a serve job's daemon died, but it "
                       + "was not run by systemd, which would restart it with the job's descriptors")
            throw ExitCode(GuardianLink.successorRefusedExitStatus)
        }
        var yes = UInt8(ascii: "A")
        _ = write(readyPipe, &yes, 1)
        close(readyPipe)
        printError("lazy-pagesd adopt: a serve job's daemon died; its descriptors are in systemd's store and the "
                   + "restarted service continues the job")
    }
}
