import CLinuxSupport
import CUserfaultfd
import Foundation
import LazyPagesFirecracker
import LinuxSupport
import Testing
import Userfaultfd

struct DescriptorCheckTests {
    @Test func aUffdIsOneAndOtherDescriptorsAreNot() throws {
        let uffd = try Userfaultfd.create()
        #expect(DescriptorCheck.isUserfaultfd(uffd.descriptor))
        let event = eventfd(0, Int32(EFD_CLOEXEC))
        defer { close(event) }
        #expect(!DescriptorCheck.isUserfaultfd(event))
        #expect(DescriptorCheck.kernelName(of: event) == "anon_inode:[eventfd]")
        let file = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(file) }
        #expect(!DescriptorCheck.isUserfaultfd(file))
        #expect(DescriptorCheck.kernelName(of: 987_654) == nil)
    }
}
