import Foundation
import LazyPagesCRIU
import LinuxSupport

/// The control socket's connection bounds: at most `connections` open in all, `connectionsPerUID` for one non-root
/// uid, and — for a connection inside a `wait`, which leaves those counts while it waits — `waitsPerUID`. So one
/// group member can neither take every slot with idle connections nor with `wait`s. Thread-safe.
final class ConnectionSlots: @unchecked Sendable {
    private let limits: ServiceLimits
    private let lock = NSLock()
    private var open = 0
    private var openByUID: [uid_t: Int] = [:]
    private var waitingByUID: [uid_t: Int] = [:]

    init(limits: ServiceLimits) { self.limits = limits }

    /// Takes a slot for a new connection of `peer`; nil if taken, else why not.
    func open(for peer: PeerCredentials) -> String? {
        lock.lock()
        defer { lock.unlock() }
        guard open < limits.connections else {
            return "too many control connections open (at most \(limits.connections))"
        }
        if peer.uid != 0 {
            let mine = openByUID[peer.uid, default: 0]
            guard mine < limits.connectionsPerUID else {
                return "uid \(peer.uid) already has \(mine) control connections open (at most \(limits.connectionsPerUID))"
            }
        }
        open += 1
        openByUID[peer.uid, default: 0] += 1
        return nil
    }

    func close(for peer: PeerCredentials) {
        lock.lock()
        defer { lock.unlock() }
        open -= 1
        openByUID[peer.uid, default: 1] -= 1
        if openByUID[peer.uid] == 0 { openByUID[peer.uid] = nil }
    }

    /// Moves a connection of `peer` from the open counts to the waiting ones; nil if done, else why not.
    func beginWait(for peer: PeerCredentials) -> String? {
        lock.lock()
        defer { lock.unlock() }
        if peer.uid != 0 {
            let mine = waitingByUID[peer.uid, default: 0]
            guard mine < limits.waitsPerUID else {
                return "uid \(peer.uid) already has \(mine) waits in progress (at most \(limits.waitsPerUID))"
            }
        }
        waitingByUID[peer.uid, default: 0] += 1
        open -= 1
        openByUID[peer.uid, default: 1] -= 1
        return nil
    }

    /// Back from a wait: the connection counts as open again (even beyond the bound: it was open before).
    func endWait(for peer: PeerCredentials) {
        lock.lock()
        defer { lock.unlock() }
        waitingByUID[peer.uid, default: 1] -= 1
        if waitingByUID[peer.uid] == 0 { waitingByUID[peer.uid] = nil }
        open += 1
        openByUID[peer.uid, default: 0] += 1
    }
}
