import Foundation
import LazyPagesEngine
import LinuxSupport
import Testing
import TestSupport
import Userfaultfd
@testable import LazyPagesService

/// What the successor of a dead `lazy-pagesd serve` daemon stores for a job before the restarted service takes it
/// back: the uffd of every live process the journal names — among them a fork the daemon had read into the
/// journal's read area and not recorded — under the daemon's own names, then a barrier.
@Suite struct ServeJobCompletionTests {
    @Test func theLiveUffdsAreStoredAndAnInterruptedForkIsRecordedFirst() throws {
        let directory = try TemporaryDirectory()
        let receiver = try NotifySocket(path: directory.path + "/notify")
        let task = try Userfaultfd.create(), gone = try Userfaultfd.create(), child = try Userfaultfd.create()
        let journal = try RestoreJournal(description: ServeJobDescription.encode(jobID: "12"))
        journal.record(.task(process: 1, imagePid: 100, uffd: task.descriptor))
        journal.record(.task(process: 2, imagePid: 101, uffd: gone.descriptor))
        journal.record(.retired(process: 2))
        // The daemon died right after reading a fork of process 1 into the read area.
        journal.beginUffdRead(process: 1)
        journal.writeMessageAsTheKernelWould(slot: 0, code: 0x13, [UInt64(child.descriptor)])

        let environment = ["NOTIFY_SOCKET": receiver.address]
        let completion = onThread {
            Result { () throws(ServeJobCompletion.Failure) in
                try ServeJobCompletion.complete(journal: journal, environment: environment)
            }
        }
        var stored: [String] = []
        while true {
            let (text, descriptors) = try receiver.receiveWithDescriptors()
            descriptors.forEach { close($0) }
            if text == "BARRIER=1\n" { break }
            stored.append(text)
        }
        let outcome = try completion().get()
        #expect(outcome.jobID == "12" && outcome.storedUffds == 2 && outcome.recordedEvents == 1)
        #expect(try journal.entries().last == .fork(parent: 1, child: 3, uffd: child.descriptor))
        let expected = [task.descriptor, child.descriptor].sorted().map {
            "FDSTORE=1\nFDNAME=lpj.12.fd.\($0)\nFDPOLL=0\n"
        }
        #expect(stored == expected)
    }

    @Test func aJournalThatIsNotAServeJobsIsRefused() throws {
        let journal = try RestoreJournal(description: Array("{\"directory\":\"/x\"}".utf8))
        #expect(throws: ServeJobCompletion.Failure.self) {
            try ServeJobCompletion.complete(journal: journal, environment: ["NOTIFY_SOCKET": "/nonexistent"])
        }
    }
}
