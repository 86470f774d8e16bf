#if canImport(Glibc)
import Glibc
import LinuxSupport
#endif

/// TCP plumbing shared by the page server and its client: address resolution, listen, connect, options.
public enum TCPSocket {
    /// Resolves `host` (IPv4, IPv6 or a name; empty or nil means every local address for a server) and `port`.
    static func resolve(host: String?, port: UInt16, passive: Bool) throws(PageServerError) -> [(family: Int32, address: [UInt8])] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var list: UnsafeMutablePointer<addrinfo>?
        let node = host.flatMap { $0.isEmpty ? nil : $0 }
        let rc = getaddrinfo(node, String(port), &hints, &list)
        guard rc == 0, let list else {
            throw PageServerError(.configuration, "cannot resolve address \(node ?? "*"):\(port): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var out: [(Int32, [UInt8])] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let e = entry {
            if let sa = e.pointee.ai_addr {
                out.append((e.pointee.ai_family, Array(UnsafeRawBufferPointer(start: sa, count: Int(e.pointee.ai_addrlen)))))
            }
            entry = e.pointee.ai_next
        }
        return out
    }

    /// A listening socket on `host:port` (port 0: the kernel picks; read it back with `localPort`).
    public static func listen(host: String?, port: UInt16, backlog: Int32 = 64) throws(PageServerError) -> Int32 {
        var lastError = "no address"
        for (family, address) in try resolve(host: host, port: port, passive: true) {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = "socket: \(SystemCallError.reason())"; continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            let bound = address.withUnsafeBytes {
                bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
            if bound != 0 || Glibc.listen(fd, backlog) != 0 {
                lastError = "bind/listen: \(SystemCallError.reason())"
                close(fd)
                continue
            }
            return fd
        }
        throw PageServerError(.configuration, "cannot listen on \(host ?? "*"):\(port): \(lastError)")
    }

    /// Connects to `host:port`, giving up after `timeoutSeconds`; the socket is returned non-blocking with
    /// TCP_NODELAY set.
    public static func connect(host: String, port: UInt16, timeoutSeconds: Double) throws(PageServerError) -> Int32 {
        var lastError = "no address"
        for (family, address) in try resolve(host: host, port: port, passive: false) {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { lastError = "socket: \(SystemCallError.reason())"; continue }
            let rc = address.withUnsafeBytes {
                Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
            if rc != 0 && errno != EINPROGRESS {
                lastError = SystemCallError.reason()
                close(fd)
                continue
            }
            if rc != 0 {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&p, 1, Int32(max(1, timeoutSeconds * 1000)))
                if ready <= 0 {
                    lastError = ready == 0 ? "connect timed out after \(timeoutSeconds) s" : SystemCallError.reason()
                    close(fd)
                    continue
                }
                var soError: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
                if soError != 0 {
                    lastError = SystemCallError.reason(soError)
                    close(fd)
                    continue
                }
            }
            setNoDelay(fd)
            return fd
        }
        throw PageServerError(.connection, "cannot connect to page server \(host):\(port): \(lastError)")
    }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The local port a socket is bound to.
    public static func localPort(_ fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return withUnsafeBytes(of: storage) { raw in
            // sin_port and sin6_port both sit at offset 2, in network order.
            UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        }
    }

    /// "address:port" of the peer, for log lines.
    public static func peerName(_ fd: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard rc == 0 else { return "?" }
        var host = [CChar](repeating: 0, count: 256)
        var service = [CChar](repeating: 0, count: 32)
        let ok = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                            NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard ok == 0 else { return "?" }
        return String(cString: host) + ":" + String(cString: service)
    }
}

