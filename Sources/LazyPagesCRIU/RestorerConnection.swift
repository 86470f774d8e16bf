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
    /// Uffds refused (unknown pid, pid twice): kept open, not closed — closing the last copy would hand that task
    /// zero pages; the failed restore's guardian kills it instead.
    private var refused: [Userfaultfd] = []
    /// Descriptors that must stay free after taking a uffd (the guardian's walk of /proc, a fork child's uffd).
    static let descriptorReserve = 4
    /// Set when the connection was given up with uffds still queued in it: kept open until this object goes, so
    /// those uffds stay alive (their tasks wait) while the failed restore's processes are killed.
    private var heldOpen = false

    deinit { if heldOpen { close(descriptor) } }

    init(descriptor: Int32, engine: RestoreEngine, source: CRIUImageSource, logger: Logger) {
        self.descriptor = descriptor
        self.engine = engine
        self.source = source
        self.logger = logger
    }

    /// Called by the engine's loop whenever the socket is readable.
    func readable() {
        while true {
            switch state {
            case .finished:
                return drainAfterFinish()
            case .expectingWord(var bytes):
                var buffer: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
                let want = 4 - bytes.count
                let n = withUnsafeMutableBytes(of: &buffer) { recv(descriptor, $0.baseAddress, want, 0) }
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN { return }
                    return broken("reading the restore socket failed: \(String(cString: strerror(errno)))")
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
                let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
                if word == Self.restoreFinished {
                    state = .finished
                    logger.info("RSTF received: the restore is complete")
                    engine.allTasksAnnounced()
                } else if word < 0 {
                    state = .expectingWord(bytes: [])
                    engine.addZombie(pid: -word)
                } else if word == 0 {
                    return broken("the restorer sent pid 0")
                } else {
                    state = .expectingDescriptor(pid: word)
                }
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

    private func adopt(_ fd: Int32, pid: Int32) {
        let uffd = Userfaultfd(adopting: fd)
        guard isUserfaultfd(fd) else {
            return broken("the descriptor sent for pid \(pid) is not a userfaultfd (\(describeDescriptor(fd)))")
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
            broken("cannot watch the uffd of pid \(pid): \(error)")
        }
    }

    private func drainAfterFinish() {
        var scratch = [UInt8](repeating: 0, count: 256)
        while true {
            let n = recv(descriptor, &scratch, scratch.count, 0)
            if n > 0 {
                logger.warning("ignoring \(n) bytes the restorer sent after RSTF")
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            // End of file (or an error) after RSTF: the restorer is done with us.
            engine.unwatch(descriptor: descriptor)
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
        close(descriptor)
        state = .finished
        engine.fail(reason)
    }
}

/// True when `fd` is a userfaultfd (an anonymous inode of that class).
func isUserfaultfd(_ fd: Int32) -> Bool {
    describeDescriptor(fd) == "anon_inode:[userfaultfd]"
}

/// What `/proc/self/fd/N` links to.
func describeDescriptor(_ fd: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
    guard n > 0 else { return "unreadable descriptor" }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
