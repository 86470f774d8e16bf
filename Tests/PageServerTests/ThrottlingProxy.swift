import Foundation
import PageServer

#if canImport(Glibc)
import Glibc
#endif

/// A slow network between the daemon and a page server: requests go through at once, answers are held back —
/// `replyDelay` seconds before each answer's header, and the bytes at `bytesPerSecond` at most. It reads the page
/// server protocol on the way, so it knows how many pages the client has asked for and not yet received (what the
/// client holds in flight): `maxOutstandingPages`.
final class ThrottlingProxy: @unchecked Sendable {
    let port: UInt16
    private let target: UInt16
    private let bytesPerSecond: Int
    private let replyDelay: Double
    private let listener: Int32
    private let lock = NSLock()
    private var requestedPages = 0
    private var deliveredPages = 0
    private var peak = 0
    private var closeSent = false
    /// Connections accepted; the counts above are those of the latest (a client that reconnects sends every
    /// unanswered request again).
    private(set) var generation = 0
    private var sockets: [Int32] = []

    init(target: UInt16, bytesPerSecond: Int, replyDelay: Double = 0) throws {
        self.target = target
        self.bytesPerSecond = bytesPerSecond
        self.replyDelay = replyDelay
        listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
        port = TCPSocket.localPort(listener)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// The most pages asked for and not yet delivered to the client at any moment.
    var maxOutstandingPages: Int { lock.withLock { peak } }
    var pagesDelivered: Int { lock.withLock { deliveredPages } }
    var connections: Int { lock.withLock { generation } }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        lock.withLock { for fd in sockets { shutdown(fd, Int32(SHUT_RDWR)) } }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { return }
            guard let upstream = try? Wire.connect(port: target) else {
                close(client)
                continue
            }
            let current = lock.withLock { () -> Int in
                sockets += [client, upstream]
                generation += 1
                requestedPages = 0
                deliveredPages = 0
                return generation
            }
            Thread.detachNewThread { [self] in forwardRequests(from: client, to: upstream, generation: current) }
            Thread.detachNewThread { [self] in forwardAnswers(from: upstream, to: client, generation: current) }
        }
    }

    /// Client → server, at once; counts the pages each `PS_IOV_GET` asks for.
    private func forwardRequests(from client: Int32, to upstream: Int32, generation current: Int) {
        while true {
            let header = Wire.receive(client, PageServerMessage.size)
            guard header.count == PageServerMessage.size else { break }
            let message = PageServerMessage(decoding: header)
            if message.command == PageServerCommand.close { lock.withLock { closeSent = true } }
            if message.command == PageServerCommand.get {
                lock.withLock {
                    guard generation == current else { return }
                    requestedPages += Int(message.pageCount)
                    peak = max(peak, requestedPages - deliveredPages)
                }
            }
            if !Wire.send(upstream, header) { break }
        }
        shutdown(upstream, Int32(SHUT_WR))
    }

    /// Server → client, slowly: each answer's header after `replyDelay`, then its pages in slices paced to
    /// `bytesPerSecond` (the pacing is the slow network itself, not a synchronisation).
    private func forwardAnswers(from upstream: Int32, to client: Int32, generation current: Int) {
        let slice = max(512, min(16 * 1024, bytesPerSecond / 50))
        while true {
            // After PS_IOV_CLOSE, with every answer delivered, the server's last word is a bare int32 status.
            let start = Wire.receive(upstream, 4)
            guard start.count == 4 else { break }
            if lock.withLock({ closeSent && requestedPages == deliveredPages }) {
                guard Wire.send(client, start) else { break }
                continue
            }
            let header = start + Wire.receive(upstream, PageServerMessage.size - 4)
            guard header.count == PageServerMessage.size else { break }
            let message = PageServerMessage(decoding: header)
            if replyDelay > 0 { usleep(UInt32(replyDelay * 1e6)) }
            let isPages = message.command == PageServerCommand.add || message.command == PageServerCommand.get
                || message.command == PageServerCommand.addWithFlags
            var remaining = isPages ? Int(message.pageCount) * 4096 : 0
            // An answer counts as delivered just before its last byte goes out: the client may ask for more the
            // moment it has it, and that must not be counted on top of the answer it just got.
            func delivered() {
                if isPages { lock.withLock { if generation == current { deliveredPages += Int(message.pageCount) } } }
            }
            if remaining == 0 { delivered() }
            guard pace(header, to: client) else { break }
            while remaining > 0 {
                let bytes = Wire.receive(upstream, min(slice, remaining))
                guard !bytes.isEmpty else { return finish(client) }
                remaining -= bytes.count
                if remaining == 0 { delivered() }
                guard pace(bytes, to: client) else { return finish(client) }
            }
        }
        finish(client)
    }

    private func pace(_ bytes: [UInt8], to client: Int32) -> Bool {
        usleep(UInt32(Double(bytes.count) / Double(bytesPerSecond) * 1e6))
        return Wire.send(client, bytes)
    }

    private func finish(_ client: Int32) {
        shutdown(client, Int32(SHUT_RDWR))
    }
}
