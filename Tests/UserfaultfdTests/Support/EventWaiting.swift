import Glibc
import LinuxSupport
import Userfaultfd

struct NoEvent: Error, CustomStringConvertible {
    let description: String
}

extension Userfaultfd {
    /// Waits (with `poll`, at most `Testee.timeoutMilliseconds`) until a message is queued, without reading it.
    func waitUntilReadable(timeoutMilliseconds: Int32 = Testee.timeoutMilliseconds) throws {
        var pfd = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let ready = retryingOnInterrupt { poll(&pfd, 1, timeoutMilliseconds) }
        guard ready > 0, pfd.revents & Int16(POLLIN) != 0 else {
            throw NoEvent(description: "no uffd message within \(timeoutMilliseconds) ms (revents \(pfd.revents))")
        }
    }

    /// True when a message is queued right now (`poll` with a zero timeout; nothing is read).
    var hasQueuedMessage: Bool {
        var pfd = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) > 0 && pfd.revents & Int16(POLLIN) != 0
    }

    /// Waits for and reads exactly one message, decoded.
    func nextEvent() throws -> Event {
        try waitUntilReadable()
        let events = try readEvents(max: 1)
        guard let first = events.first else { throw NoEvent(description: "poll said readable, read found nothing") }
        return try first.get()
    }
}
