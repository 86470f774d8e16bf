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

/// The descriptor store's messages (`FDSTORE=1`, `FDNAME=`, `FDPOLL=0`, `FDSTOREREMOVE=1`), received as systemd
/// receives them: one datagram with the descriptors attached (`SCM_RIGHTS`).
@Suite struct FileDescriptorStoreTests {
    @Test func withoutNotifySocketOrCapacityThereIsNoStore() {
        #expect(FileDescriptorStore(capacity: 8, environment: [:]) == nil)
        #expect(FileDescriptorStore(capacity: 0, environment: ["NOTIFY_SOCKET": "/run/x"]) == nil)
    }

    @Test func storedDescriptorsArriveWithTheirNameAndPollSetting() throws {
        let directory = try TemporaryDirectory()
        let receiver = try NotifySocket(path: directory.path + "/notify")
        let store = try #require(FileDescriptorStore(capacity: 3, environment: ["NOTIFY_SOCKET": receiver.address]))
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        try store.store([pipeEnds[0]], name: "lpj.7.uffd.1", poll: false)
        let (text, descriptors) = try receiver.receiveWithDescriptors()
        #expect(text == "FDSTORE=1\nFDNAME=lpj.7.uffd.1\nFDPOLL=0\n")
        #expect(descriptors.count == 1)
        // The very same open file: what is written into the pipe is read through the received descriptor.
        #expect(write(pipeEnds[1], "x", 1) == 1)
        var byte: UInt8 = 0
        #expect(read(descriptors[0], &byte, 1) == 1 && byte == UInt8(ascii: "x"))
        descriptors.forEach { close($0) }

        try store.store([pipeEnds[1]], name: "lpj.7.record")
        let second = try receiver.receiveWithDescriptors()
        #expect(second.text == "FDSTORE=1\nFDNAME=lpj.7.record\n")
        second.descriptors.forEach { close($0) }
        #expect(store.count == 2)

        try store.remove(name: "lpj.7.uffd.1")
        let removal = try receiver.receiveWithDescriptors()
        #expect(removal.text == "FDSTOREREMOVE=1\nFDNAME=lpj.7.uffd.1\n")
        #expect(removal.descriptors.isEmpty)
        #expect(store.count == 1)
    }

    @Test func theStoreRefusesBeyondItsCapacityAndBadNames() throws {
        let directory = try TemporaryDirectory()
        let receiver = try NotifySocket(path: directory.path + "/notify")
        let store = try #require(FileDescriptorStore(capacity: 1, environment: ["NOTIFY_SOCKET": receiver.address]))
        try store.store([0], name: "one")
        try receiver.receiveWithDescriptors().descriptors.forEach { close($0) }
        #expect(throws: FileDescriptorStore.Error.self) { try store.store([0], name: "two") }
        #expect(store.count == 1)
        #expect(throws: FileDescriptorStore.Error.self) { try store.store([0], name: "a:b") }
        #expect(!FileDescriptorStore.isValidName(""))
        #expect(!FileDescriptorStore.isValidName(String(repeating: "x", count: 256)))
        #expect(!FileDescriptorStore.isValidName("with space"))
        #expect(FileDescriptorStore.isValidName("lpj.12.uffd.3"))
        store.adopt(name: "came-back", count: 0)
        #expect(throws: FileDescriptorStore.Error.self) { try store.store([0], name: "three") }
    }

    /// `BARRIER=1` comes with one descriptor, the write end of a pipe: the barrier returns once systemd (here, the
    /// test) has closed its copy, and fails at its bound when nobody does.
    @Test func theBarrierReturnsOnceTheReceiverClosesItsEnd() throws {
        let directory = try TemporaryDirectory()
        let receiver = try NotifySocket(path: directory.path + "/notify")
        let store = try #require(FileDescriptorStore(capacity: 4, environment: ["NOTIFY_SOCKET": receiver.address]))
        // Nobody reads: the descriptor stays queued in the socket, open.
        #expect(throws: FileDescriptorStore.Error.self) { try store.barrier(timeout: 100) }
        try receiver.receiveWithDescriptors().descriptors.forEach { close($0) }

        let barrier = onThread { Result { try store.barrier(timeout: 30_000) } }
        let (text, descriptors) = try receiver.receiveWithDescriptors()
        #expect(text == "BARRIER=1\n")
        #expect(descriptors.count == 1)
        descriptors.forEach { close($0) }
        #expect(throws: Never.self) { try barrier().get() }
    }

    @Test func nobodyListeningIsAnErrorNotASilentDrop() throws {
        let store = try #require(FileDescriptorStore(capacity: 4, environment: ["NOTIFY_SOCKET": "/nonexistent/notify"]))
        #expect(throws: FileDescriptorStore.Error.self) { try store.store([0], name: "x") }
        #expect(store.count == 0)
    }
}
