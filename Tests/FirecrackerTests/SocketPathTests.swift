import Foundation
import LazyPagesEngine
import LazyPagesFirecracker
import Logging
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The socket path of a Firecracker restore is the caller's choice: found by the control-protocol fuzzer, a path
/// naming an existing file must never replace it, and a long file name must be an error or work, never a crash.
@Suite struct SocketPathTests {
    static func session(socket: String, memoryFile: String) throws -> FirecrackerSession {
        var logger = Logger(label: "socket-path-test")
        logger.logLevel = .critical
        return try FirecrackerSession(socketPath: socket, memoryFile: memoryFile, logger: logger)
    }

    @Test func aSocketPathNamingARegularFileIsRefusedAndTheFileKept() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let before = FileManager.default.contents(atPath: fixture.memoryFile)
        #expect {
            // The snapshot's own memory file given as the socket path, a plausible slip.
            _ = try Self.session(socket: fixture.memoryFile, memoryFile: fixture.memoryFile)
        } throws: { error in
            "\(error)".contains("\(fixture.memoryFile) exists and is not a socket; refusing to replace it")
        }
        #expect(FileManager.default.contents(atPath: fixture.memoryFile) == before)
    }

    @Test func aStaleSocketIsReplaced() throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        do { _ = try Self.session(socket: fixture.socket, memoryFile: fixture.memoryFile) }
        // The first session's listener unlinked its socket on close; leave a real stale one behind.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(stale) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(fixture.socket.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        let session = try Self.session(socket: fixture.socket, memoryFile: fixture.memoryFile)
        #expect(session.listener.path == fixture.socket)
    }

    @Test(arguments: [90, 200, 255, 300])
    func aLongSocketFileNameListensOrFailsClearly(length: Int) throws {
        let fixture = try SnapshotFixture(bytes: 1 << 20)
        let path = fixture.directory + "/" + String(repeating: "s", count: length)
        let result = Result { try Self.session(socket: path, memoryFile: fixture.memoryFile) }
        switch result {
        case .success(let session):
            #expect(length <= 255)
            var status = stat()
            #expect(stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK)
            session.listener.close()
        case .failure(let error):
            #expect(length > 255, "\(error)")
            #expect("\(error)".contains("File name too long"), "\(error)")
        }
    }
}
