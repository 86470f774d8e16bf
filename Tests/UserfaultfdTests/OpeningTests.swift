import Glibc
import SystemPackage
import Testing
import Userfaultfd

/// Getting a uffd and negotiating its API.
@Suite(.timeLimit(.minutes(1)))
struct OpeningTests {
    /// The feature bits this kernel (6.18) offers: 0..16, up to `UFFD_FEATURE_MOVE`.
    static let thisKernelsFeatures: UInt64 = 0x1ffff

    @Test func devicePathGivesAUffd() throws {
        let uffd = try Userfaultfd.create(via: .device)
        #expect(uffd.openPath == .device)
        #expect(uffd.descriptor >= 0)
        #expect(fcntl(uffd.descriptor, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(uffd.descriptor, F_GETFL) & O_NONBLOCK != 0)
    }

    @Test func createPrefersTheDevice() throws {
        #expect(try Userfaultfd.create().openPath == .device)
    }

    @Test func syscallPathGivesAUffd() throws {
        let uffd = try Userfaultfd.create(via: .syscall)
        #expect(uffd.openPath == .syscall)
        #expect(try uffd.negotiate(features: []).features.rawValue == Self.thisKernelsFeatures)
    }

    @Test func negotiatingNothingReportsEveryOfferedFeature() throws {
        let uffd = try Userfaultfd.create()
        let info = try uffd.negotiate(features: [])
        #expect(info.features.rawValue == Self.thisKernelsFeatures)
        #expect(info.enabled.isEmpty)
        #expect(info.ioctls.isSuperset(of: [.register, .unregister, .api]))
        #expect(uffd.api == info)
    }

    @Test func openEnablesRequiredAndOfferedOptionalFeatures() throws {
        let unknown = Features(rawValue: 1 << 41)
        let uffd = try Userfaultfd.open(
            required: Features.nonCooperativeEvents, optional: [.threadID, unknown], requiredIoctls: [.register])
        let api = try #require(uffd.api)
        #expect(api.enabled == Features.nonCooperativeEvents.union(.threadID))
        #expect(api.features.rawValue == Self.thisKernelsFeatures)
    }

    @Test func openRequiringAFeatureTheKernelLacksNamesIt() throws {
        let lacking = Features(rawValue: 1 << 40)
        #expect(throws: UserfaultfdError.missingFeatures(lacking)) {
            try Userfaultfd.open(required: [.eventFork, lacking])
        }
        do {
            _ = try Userfaultfd.open(required: [.eventFork, lacking])
        } catch {
            #expect(error.description.contains("bit40"))
            #expect(!error.description.contains("event_fork"))
        }
    }

    @Test func openRequiringARangeIoctlFailsNamingIt() throws {
        // UFFDIO_API reports only register/unregister/api; range ioctls are reported per registration.
        #expect(throws: UserfaultfdError.missingIoctls(.copy)) { try Userfaultfd.open(requiredIoctls: [.copy]) }
    }

    @Test func secondAPICallOnOneDescriptorIsEINVAL() throws {
        let uffd = try Userfaultfd.create()
        try uffd.negotiate(features: [.eventFork])
        #expect(throws: UserfaultfdError.apiFailed(.invalidArgument)) { try uffd.negotiate(features: []) }
        // The first negotiation stays on record.
        #expect(uffd.api?.enabled == [.eventFork])
    }

    @Test func optionSetsKeepUnknownBits() {
        let raw: UInt64 = (1 << 40) | (1 << 63) | Features.eventFork.rawValue
        let features = Features(rawValue: raw)
        #expect(features.rawValue == raw)
        #expect(features.names == ["event_fork", "bit40", "bit63"])
        #expect(features.union(.move).rawValue == raw | Features.move.rawValue)
        #expect(features.subtracting(.eventFork).rawValue == (1 << 40) | (1 << 63) as UInt64)

        let ioctls = Ioctls(rawValue: (1 << 50) | Ioctls.copy.rawValue)
        #expect(ioctls.rawValue == (1 << 50) | (1 << 3))
        #expect(ioctls.names == ["copy", "bit50"])

        #expect(RegisterMode(rawValue: 1 << 9 | 1).rawValue == 1 << 9 | 1)
        #expect(PageFaultFlags(rawValue: 1 << 7).rawValue == 1 << 7)
        #expect(OpenFlags(rawValue: 1 << 30).rawValue == 1 << 30)
    }

    @Test func registeredAnonymousRangeOffersTheRangeIoctls() throws {
        let uffd = try Userfaultfd.create()
        try uffd.negotiate(features: [])
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let region = try #require(mmap(nil, 2 * pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        #expect(region != MAP_FAILED)
        defer { munmap(region, 2 * pageSize) }
        let range = AddressRange(start: UInt64(UInt(bitPattern: region)), length: UInt64(2 * pageSize))
        let ioctls = try uffd.register(range)
        #expect(ioctls.isSuperset(of: [.wake, .copy, .zeroPage, .move, .poison]))
        try uffd.unregister(range)
        #expect(throws: UserfaultfdError.self) { try uffd.register(AddressRange(start: 1, length: 1)) }
    }
}
