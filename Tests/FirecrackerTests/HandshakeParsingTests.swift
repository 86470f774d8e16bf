import Foundation
import LazyPagesFirecracker
import Testing

/// The handshake's JSON and its validation rules, one by one (pure code: no kernel needed).
struct HandshakeParsingTests {
    static let twoMiB: UInt64 = 2 << 20

    @Test func firecrackersMessageDecodesAndPageSizeKibIsIgnored() throws {
        let json = #"[{"base_host_virt_addr":140000000000000,"size":1048576,"offset":0,"page_size":4096,"page_size_kib":4096},"#
            + #"{"base_host_virt_addr":140000001048576,"size":2097152,"offset":1048576,"page_size":4096,"page_size_kib":1}]"#
        let mappings = try GuestMemoryMapping.decodeList(Array(json.utf8))
        #expect(mappings == [
            GuestMemoryMapping(baseHostVirtAddr: 140_000_000_000_000, size: 1 << 20, offset: 0, pageSize: 4096),
            GuestMemoryMapping(baseHostVirtAddr: 140_000_001_048_576, size: 2 << 20, offset: 1 << 20, pageSize: 4096),
        ])
    }

    @Test(arguments: [
        (#"[{"base_host_virt_addr":1,"size":2,"offset":3}]"#, "mapping 0 has no \"page_size\""),
        (#"[{"base_host_virt_addr":"0x1000","size":2,"offset":3,"page_size":4096}]"#, "[0].base_host_virt_addr is not"),
        (#"[{"base_host_virt_addr":-1,"size":2,"offset":3,"page_size":4096}]"#, "not valid"),
        (#"{"base_host_virt_addr":1}"#, "the message is not"),
        (#"[{"base_host_virt_addr":1,"#, "not valid JSON"),
        ("", "not valid JSON"),
    ])
    func malformedMessagesAreRefusedNamingWhatIsWrong(json: String, expected: String) {
        #expect {
            _ = try GuestMemoryMapping.decodeList(Array(json.utf8))
        } throws: { error in
            guard let error = error as? HandshakeError else { return false }
            return error.code == .malformedJSON && error.message.contains(expected)
        }
    }

    @Test func nonUTF8IsRefused() {
        #expect(throws: HandshakeError(.malformedJSON, "the mappings are not UTF-8 text")) {
            _ = try GuestMemoryMapping.decodeList([0x5B, 0xFF, 0x5D])
        }
    }

    static func m(_ base: UInt64, _ size: UInt64, _ offset: UInt64, _ page: UInt64 = 4096) -> GuestMemoryMapping {
        GuestMemoryMapping(baseHostVirtAddr: base, size: size, offset: offset, pageSize: page)
    }

    @Test func validMappingsComeBackSortedByAddress() throws {
        let sorted = try GuestMemoryMapping.validate(
            [Self.m(0x20_0000, 0x1000, 0x1000), Self.m(0x10_0000, 0x1000, 0)], fileSize: 0x2000)
        #expect(sorted.map { $0.baseHostVirtAddr } == [0x10_0000, 0x20_0000])
        _ = try GuestMemoryMapping.validate([Self.m(0x4000_0000, Self.twoMiB, Self.twoMiB, Self.twoMiB)], fileSize: 2 * Self.twoMiB)
    }

    @Test(arguments: [
        ([m(0x10_0000, 0x1000, 0, 8192)], HandshakeError.Code.badPageSize),
        ([m(0x10_0000, 0x1000, 0), m(0x40_0000, twoMiB, 0, twoMiB)], .badPageSize),
        ([m(0x10_0800, 0x1000, 0)], .misaligned),
        ([m(0x10_0000, 0x1800, 0)], .misaligned),
        ([m(0x10_0000, 0x1000, 0x10)], .misaligned),
        ([m(0x10_0000, 0, 0)], .misaligned),
        ([m(0x20_0000, twoMiB / 2, 0, twoMiB)], .misaligned),
        ([m(UInt64.max - 0xFFF, 0x2000, 0)], .misaligned),
        ([m(0x10_0000, 0x2000, 0), m(0x10_1000, 0x1000, 0)], .overlapping),
        ([m(0x10_0000, 0x1000, 0), m(0x10_0000, 0x1000, 0x1000)], .overlapping),
        ([m(0x10_0000, 0x1000, 0x4000)], .outsideFile),
        ([m(0x10_0000, 0x4000, 0x1000)], .outsideFile),
        ([m(0x10_0000, 0x1000, UInt64.max - 0xFFF)], .outsideFile),
        ([], .noMappings),
    ])
    func everyRuleIsChecked(mappings: [GuestMemoryMapping], code: HandshakeError.Code) {
        #expect {
            _ = try GuestMemoryMapping.validate(mappings, fileSize: 0x4000)
        } throws: { error in
            (error as? HandshakeError)?.code == code
        }
    }

    @Test func adjacentRegionsDoNotOverlap() throws {
        _ = try GuestMemoryMapping.validate([Self.m(0x10_0000, 0x1000, 0), Self.m(0x10_1000, 0x1000, 0)], fileSize: 0x1000)
    }
}
