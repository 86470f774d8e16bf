import LazyPagesEngine
import LinuxSupport
import Logging
import Userfaultfd

#if canImport(Glibc)
import Glibc
#endif

/// CRIU's side of the restore → daemon socket, one connection: for each task an `int32` virtual pid followed (for a
/// live task) by one byte carrying the task's uffd as `SCM_RIGHTS`, a negative pid for a zombie, and finally the
/// word `RSTF`. Reads are non-blocking and resumable, so a slow restorer never stalls fault service.
final class RestorerConnection {
    /// "RSTF" as the native-endian int32 CRIU writes.
    static let restoreFinished: Int32 = 0x5253_5446

    private enum State {
        case expectingWord(bytes: [UInt8])
        case expectingDescriptor(pid: Int32)
        case finished
    }

    let descriptor: Int32
    private var state: State = .expectingWord(bytes: [])
    private let engine: RestoreEngine
    private let source: CRIUImageSource
    private let logger: Logger
    /// Image pids seen so far (a pid twice is an error).
    private var announced: Set<Int32> = []
    /// Uffds refused (unknown pid, pid twice, one over the restore's bound): kept open, not closed — closing the last
    /// copy would hand that task zero pages; the failed restore's guardian kills it instead.
    private var refused: [Userfaultfd] = []
    /// Descriptors that must stay free after taking a uffd (the guardian's walk of /proc, a fork child's uffd).
    static let descriptorReserve = 4
    /// Set when the connection was given up with uffds still queued in it: kept open until this object goes, so
    /// those uffds stay alive (their tasks wait) while the failed restore's processes are killed.
    private var heldOpen = false

    /// The restore's journal (`engine.journal`): every read from the socket happens under its marker, and each pid
    /// word read is recorded, so a successor can go on reading the connection where this daemon stopped.
    private var journal: RestoreJournal? { engine.journal }
    /// True while the marker is held across calls: a word was read in part (a successor could not know which bytes).
    private var holdingMarker = false

    deinit {
        if heldOpen { close(descriptor) }
        if holdingMarker { journal?.endReading() }
    }

    init(descriptor: Int32, engine: RestoreEngine, source: CRIUImageSource, logger: Logger) {
        self.descriptor = descriptor
        self.engine = engine
        self.source = source
        self.logger = logger
    }

    /// A connection a successor daemon inherited: `announced` are the tasks its predecessor took, `awaiting` a pid
    /// word it read whose uffd had not come yet, `finished` whether RSTF had come.
    convenience init(resuming descriptor: Int32, engine: RestoreEngine, source: CRIUImageSource, announced: Set<Int32>,
         awaiting: Int32?, finished: Bool, logger: Logger)
    {
        self.init(descriptor: descriptor, engine: engine, source: source, logger: logger)
        self.announced = announced
        state = finished ? .finished : awaiting.map { .expectingDescriptor(pid: $0) } ?? .expectingWord(bytes: [])
    }

    /// Called by the engine's loop whenever the socket is readable.
    func readable() {
        while true {
            // A whole word queued is taken straight into the journal's word area: a daemon killed before recording
            // what it said leaves the word to its successor (`completeInterruptedWordRead`), so it needs no marker.
            if let journal, !holdingMarker, case .expectingWord(let bytes) = state, bytes.isEmpty {
                switch takeWholeWord(into: journal) {
                case .word(let word):
                    let going = take(word: word)
                    journal.endWordRead()
                    if going { continue } else { return }
                case .broken(let reason):
                    journal.endWordRead()
                    return broken(reason)
                case .notQueued:
                    break
                }
            }
            // Each word read is recorded before the marker is cleared; a word read in part keeps it (a successor
            // cannot know the bytes already taken). A uffd received needs no marker: a successor finds it open and
            // unrecorded, the one uffd of the pid the journal says was awaited (`claim`).
            if case .expectingWord = state {
                if !holdingMarker { journal?.beginReading() }
                holdingMarker = true
            }
            defer {
                if holdingMarker, case .expectingWord(let bytes) = state, !bytes.isEmpty {} else if holdingMarker {
                    journal?.endReading()
                    holdingMarker = false
                }
            }
            switch state {
            case .finished:
                return drainAfterFinish()
            case .expectingWord(var bytes):
                var buffer: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
                let want = 4 - bytes.count
                let n = withUnsafeMutableBytes(of: &buffer) { raw in
                    retryingOnInterrupt { recv(descriptor, raw.baseAddress, want, 0) }
                }
                if n < 0 {
                    if errno == EAGAIN { return }
                    return broken("reading the restore socket failed: \(SystemCallError.reason(errno))")
                }
                if n == 0 {
                    return broken(bytes.isEmpty
                        ? "the restorer closed the lazy-pages socket before sending RSTF (restore failed?)"
                        : "the restorer closed the lazy-pages socket in the middle of a pid")
                }
                withUnsafeBytes(of: buffer) { bytes.append(contentsOf: $0.prefix(n)) }
                guard bytes.count == 4 else {
                    state = .expectingWord(bytes: bytes)
                    continue
                }
                if !take(word: bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }) { return }
            case .expectingDescriptor(let pid):
                // With no descriptor free, the kernel would drop the uffd on receipt (MSG_CTRUNC) — its last copy,
                // handing the task zero pages. Leave it queued and fail instead.
                guard DescriptorLimit.hasRoom(reserve: Self.descriptorReserve, probe: descriptor) else {
                    return outOfDescriptors(pid: pid)
                }
                let received: DescriptorPassing.Received
                do {
                    received = try DescriptorPassing.receive(socket: descriptor, maxBytes: 1, maxDescriptors: 1)
                } catch let error where error.errno == EAGAIN {
                    return
                } catch {
                    return broken("receiving the uffd of pid \(pid) failed: \(error)")
                }
                if received.bytes.isEmpty && received.descriptors.isEmpty {
                    return broken("the restorer closed the lazy-pages socket before sending the uffd of pid \(pid)")
                }
                state = .expectingWord(bytes: [])
                guard let fd = received.descriptors.first, received.descriptors.count == 1, !received.truncated else {
                    received.descriptors.forEach { close($0) }
                    if received.descriptors.isEmpty && received.truncated {
                        return broken("the kernel dropped the uffd of pid \(pid) on receipt (out of file descriptors? "
                            + "limit \(DescriptorLimit.current.soft)); raise RLIMIT_NOFILE (ulimit -n) of lazy-pagesd")
                    }
                    return broken("expected exactly one uffd for pid \(pid), got \(received.descriptors.count)"
                        + (received.truncated ? " (and more the kernel dropped)" : ""))
                }
                adopt(fd, pid: pid)
            }
        }
    }

    /// Acts on a whole word (recording it first); false when it broke the connection.
    private func take(word: Int32) -> Bool {
        if word == Self.restoreFinished {
            state = .finished
            logger.info("RSTF received: the restore is complete")
            engine.allTasksAnnounced()
        } else if word == 0 || word == Int32.min {
            broken("the restorer sent pid word \(word), which names no task")
            return false
        } else if word < 0 {
            state = .expectingWord(bytes: [])
            engine.addZombie(pid: -word)
        } else {
            journal?.record(.frontEnd(kind: CRIUJournalEntry.awaitingDescriptor.rawValue, a: Int64(word), b: 0))
            state = .expectingDescriptor(pid: word)
        }
        return true
    }

    private enum WholeWord { case word(Int32), notQueued, broken(String) }

    /// Takes the next word into `journal`'s word area if all four of its bytes are queued (peeked first), else
    /// leaves the socket as it is (`.notQueued`: a word in parts, the end of the stream or an error, for the marked
    /// path).
    private func takeWholeWord(into journal: RestoreJournal) -> WholeWord {
        var peeked: Int32 = 0
        let queued = retryingOnInterrupt { recv(descriptor, &peeked, 4, Int32(MSG_PEEK)) }
        guard queued == 4 else { return .notQueued }
        journal.beginWordRead(socket: descriptor)
        let n = retryingOnInterrupt { recv(descriptor, journal.wordArea, 4, 0) }
        guard n == 4 else {
            return .broken("reading a pid word the restorer had sent failed: "
                           + (n < 0 ? SystemCallError.reason(errno) : "\(n) of its 4 bytes"))
        }
        wordsTaken += 1
        if wordsTaken == Self.stopAfterTakingWord { raise(SIGSTOP) }
        return .word(journal.wordArea.load(as: Int32.self))
    }

    /// Fault injection for the hand-over tests (`LP_FAULT_STOP_AFTER_TAKING_WORD=N`): the daemon stops with SIGSTOP
    /// after taking its Nth whole word into the word area, before recording it (the test then kills it).
    private static let stopAfterTakingWord: Int = {
        guard let value = getenv("LP_FAULT_STOP_AFTER_TAKING_WORD") else { return 0 }
        return max(1, Int(String(cString: value)) ?? 1)
    }()
    private var wordsTaken = 0

    /// For a successor: the uffd its predecessor received for the awaited pid but died before recording (the one
    /// uffd open that the journal does not account for), taken as if it had just arrived.
    func claim(_ fd: Int32) {
        guard case .expectingDescriptor(let pid) = state else { return }
        state = .expectingWord(bytes: [])
        adopt(fd, pid: pid)
    }

    private func adopt(_ fd: Int32, pid: Int32) {
        let uffd = Userfaultfd(adopting: fd)
        guard DescriptorCheck.isUserfaultfd(fd) else {
            let name = DescriptorCheck.kernelName(of: fd) ?? "unreadable descriptor"
            return broken("the descriptor sent for pid \(pid) is not a userfaultfd (\(name))")
        }
        guard announced.insert(pid).inserted else {
            refused.append(uffd)
            return broken("pid \(pid) was announced twice")
        }
        let space: AddressSpace
        do {
            space = try source.addressSpace(forTask: pid)
        } catch {
            refused.append(uffd)
            return broken(error.message)
        }
        do {
            try engine.addTask(imagePid: pid, uffd: uffd, space: space)
        } catch {
            // Not tracked (the restore's bound reached, or epoll refused it): kept open like any refused uffd.
            refused.append(uffd)
            broken("cannot watch the uffd of pid \(pid): \(error)")
        }
    }

    private func drainAfterFinish() {
        var scratch = [UInt8](repeating: 0, count: 256)
        while true {
            let n = retryingOnInterrupt { recv(descriptor, &scratch, scratch.count, 0) }
            if n > 0 {
                logger.warning("ignoring \(n) bytes the restorer sent after RSTF")
                continue
            }
            if n < 0 && errno == EAGAIN { return }
            // End of file (or an error) after RSTF: the restorer is done with us.
            engine.unwatch(descriptor: descriptor)
            journal?.record(.frontEnd(kind: CRIUJournalEntry.connectionClosed.rawValue, a: Int64(descriptor), b: 0))
            close(descriptor)
            return
        }
    }

    private func outOfDescriptors(pid: Int32) {
        engine.unwatch(descriptor: descriptor)
        heldOpen = true
        state = .finished
        engine.fail("out of file descriptors: cannot take the uffd of pid \(pid) (\(announced.count) tasks taken, "
            + "limit \(DescriptorLimit.current.soft)); raise RLIMIT_NOFILE (ulimit -n) of lazy-pagesd")
    }

    private func broken(_ reason: String) {
        engine.unwatch(descriptor: descriptor)
        journal?.record(.frontEnd(kind: CRIUJournalEntry.connectionClosed.rawValue, a: Int64(descriptor), b: 0))
        close(descriptor)
        state = .finished
        engine.fail(reason)
    }
}

/// The CRIU front end's own entries in a restore journal (`RestoreJournal.Entry.frontEnd` kinds).
public enum CRIUJournalEntry: UInt32, Sendable {
    /// `a`: the descriptor of the listening socket (`lazy-pages.socket`).
    case listener = 1
    /// `a`: the listener's descriptor, closed right after this entry.
    case listenerClosed = 2
    /// `a`: the accepted restorer connection's descriptor, `b`: the restorer's pid.
    case connection = 3
    /// `a`: the connection's descriptor, closed right after this entry.
    case connectionClosed = 4
    /// `a`: a pid word read from the connection whose uffd has not been received yet.
    case awaitingDescriptor = 5
}
