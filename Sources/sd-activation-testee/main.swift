// sd-activation-testee: a minimal socket-activated Type=notify service, for the SystemdSupport tests.
//
// It takes the sockets systemd-style activation passed it, sends STATUS= and READY=1 on NOTIFY_SOCKET, accepts one
// connection on the first socket, writes "hello NAME fds=N\n" to it, sends STOPPING=1 and exits 0. With no
// activated socket it prints "no activated sockets" on stdout and exits 3; on bad variables, the error and exit 2.
import SystemdSupport

#if canImport(Glibc)
import Glibc
#endif

let sockets: [SocketActivation.Socket]
do {
    sockets = try SocketActivation.sockets()
} catch {
    print("activation error: \(error)")
    exit(2)
}
SocketActivation.unsetEnvironment()
let notifier = SystemdNotifier()
guard let first = sockets.first else {
    print("no activated sockets")
    exit(3)
}
notifier.status("listening on \(sockets.count) socket(s)")
notifier.ready()
let connection = accept(first.descriptor, nil, nil)
guard connection >= 0 else {
    print("accept failed: errno \(errno)")
    exit(4)
}
let reply = Array("hello \(first.name) fds=\(sockets.count) cloexec=\(fcntl(first.descriptor, F_GETFD) & FD_CLOEXEC)\n".utf8)
_ = reply.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
close(connection)
notifier.stopping(status: "done")
exit(0)
