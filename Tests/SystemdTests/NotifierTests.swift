import Foundation
import TestSupport
import Testing
@testable import SystemdSupport

/// sd_notify from this process to a datagram socket the test binds, as systemd binds its notify socket.
@Suite struct NotifierTests {
    @Test func withoutNotifySocketNothingIsSent() {
        let notifier = SystemdNotifier(environment: [:])
        #expect(!notifier.isEnabled)
        #expect(!notifier.ready())
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": ""]).isEnabled)
    }

    @Test func aPathSocketGetsReadyStatusAndStopping() throws {
        let directory = try TemporaryDirectory()
        let receiver = try NotifySocket(path: directory.path + "/notify")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": receiver.address])
        #expect(notifier.ready(status: "listening"))
        #expect(notifier.status("2 jobs"))
        #expect(notifier.stopping())
        #expect(try receiver.receive() == "READY=1\nSTATUS=listening\n")
        #expect(try receiver.receive() == "STATUS=2 jobs\n")
        #expect(try receiver.receive() == "STOPPING=1\n")
    }

    @Test func anAbstractSocketIsReachedThroughItsAtName() throws {
        let receiver = try NotifySocket(abstractName: "lazy-pages-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": receiver.address])
        #expect(notifier.ready())
        #expect(try receiver.receive() == "READY=1\n")
    }

    @Test func badAddressesAndAssignmentsAreRefusedNotSent() {
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "relative/path"]).ready())
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "/" + String(repeating: "x", count: 200)]).ready())
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/notify"])
        #expect(!notifier.notify(["NO_EQUALS_SIGN"]))
        #expect(!notifier.notify(["STATUS=two\nlines"]))
        #expect(!notifier.ready(), "nobody listens there")
    }

    @Test func abstractAddressesAreNotPadded() throws {
        let abstract = try #require(SystemdNotifier.address("@abc"))
        #expect(Int(abstract.length) == MemoryLayout<sa_family_t>.size + 4)
        let path = try #require(SystemdNotifier.address("/run/x"))
        #expect(Int(path.length) == MemoryLayout<sa_family_t>.size + 7)
    }
}

/// sd_listen_fds_with_names, in process, with environments the test writes.
@Suite struct SocketActivationVariablesTests {
    @Test func variablesForAnotherProcessAreIgnored() throws {
        #expect(try SocketActivation.sockets(environment: ["LISTEN_PID": "1", "LISTEN_FDS": "1"], pid: 2) == [])
        #expect(try SocketActivation.sockets(environment: [:]) == [])
    }

    @Test func badVariablesAreErrorsNamingThem() {
        #expect(throws: SocketActivation.Error(description: "LISTEN_PID is not a process id: \"x\"")) {
            try SocketActivation.sockets(environment: ["LISTEN_PID": "x", "LISTEN_FDS": "1"], pid: 2)
        }
        #expect(throws: SocketActivation.Error(description: "LISTEN_FDS is not a descriptor count: \"-1\"")) {
            try SocketActivation.sockets(environment: ["LISTEN_PID": "2", "LISTEN_FDS": "-1"], pid: 2)
        }
        #expect(throws: SocketActivation.Error(description: "LISTEN_FDNAMES has 2 names for 1 descriptors")) {
            try SocketActivation.sockets(
                environment: ["LISTEN_PID": "2", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"], pid: 2)
        }
    }
}
