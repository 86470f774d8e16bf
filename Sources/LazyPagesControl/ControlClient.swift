import Foundation
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A connection to the control socket of `lazy-pagesd serve`: one request line out, one reply line back.
public final class ControlClient {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    public let socketPath: String
    private var descriptor: Int32
    private var buffered: [UInt8] = []

    /// Connects to `socketPath`.
    public init(socketPath: String = ControlProtocol.defaultSocketPath) throws(Failure) {
        self.socketPath = socketPath
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Failure("socket(AF_UNIX): \(SystemCallError.reason(errno))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(descriptor)
            throw Failure("control socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let reason = SystemCallError.reason(errno)
            Glibc.close(descriptor)
            throw Failure("cannot connect to the control socket \(socketPath): \(reason) (is `lazy-pagesd serve` running?)")
        }
    }

    deinit { Glibc.close(descriptor) }

    /// Sends `request` and returns the daemon's reply.
    public func send(_ request: ControlRequest) throws(Failure) -> ControlReply {
        let data: Data
        do { data = try JSONEncoder().encode(request) } catch { throw Failure("cannot encode the request: \(error)") }
        return try sendLine(Array(data) + [UInt8(ascii: "\n")])
    }

    /// Sends raw bytes (one line, newline included) and returns the decoded reply: for tests of refusals.
    public func sendLine(_ bytes: [UInt8]) throws(Failure) -> ControlReply {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { raw in
                retryingOnInterrupt { Glibc.send(descriptor, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
            }
            if n < 0 {
                // The daemon may refuse (and hang up on) an oversized line before reading all of it.
                if errno == EPIPE || errno == ECONNRESET { break }
                throw Failure("writing to \(socketPath): \(SystemCallError.reason(errno))")
            }
            offset += n
        }
        let line = try readLine()
        do {
            return try JSONDecoder().decode(ControlReply.self, from: Data(line))
        } catch {
            throw Failure("the daemon's reply is not a control reply: \(String(decoding: line, as: UTF8.self))")
        }
    }

    private func readLine() throws(Failure) -> [UInt8] {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffered[..<newline])
                buffered.removeSubrange(...newline)
                return line
            }
            let n = chunk.withUnsafeMutableBytes { raw in retryingOnInterrupt { read(descriptor, raw.baseAddress, raw.count) } }
            guard n > 0 else {
                throw Failure(n == 0 ? "the daemon closed the connection without replying"
                    : "reading from \(socketPath): \(SystemCallError.reason(errno))")
            }
            buffered += chunk[..<n]
        }
    }
}
