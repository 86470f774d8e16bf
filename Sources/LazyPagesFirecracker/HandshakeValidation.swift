/// The page sizes a guest region may use: base pages, and 2 MiB hugetlbfs pages.
public let supportedGuestPageSizes: Set<UInt64> = [4096, 2 << 20]

extension GuestMemoryMapping {
    /// Checks a handshake's mappings against the snapshot memory file of `fileSize` bytes: at least one region;
    /// one supported page size shared by all; base, size and offset multiples of it; no empty region; no overflow;
    /// no two regions overlapping; every region's bytes inside the file. Returns the mappings sorted by address.
    public static func validate(_ mappings: [GuestMemoryMapping], fileSize: UInt64) throws(HandshakeError)
        -> [GuestMemoryMapping]
    {
        guard let first = mappings.first else { throw HandshakeError(.noMappings, "the mappings array is empty") }
        for (i, m) in mappings.enumerated() {
            guard supportedGuestPageSizes.contains(m.pageSize) else {
                throw HandshakeError(.badPageSize, "mapping \(i) has page_size \(m.pageSize); supported: 4096, 2097152")
            }
            guard m.pageSize == first.pageSize else {
                throw HandshakeError(
                    .badPageSize, "mapping \(i) has page_size \(m.pageSize) but mapping 0 has \(first.pageSize)")
            }
            let mask = m.pageSize - 1
            for (name, value) in [("base_host_virt_addr", m.baseHostVirtAddr), ("size", m.size), ("offset", m.offset)]
            where value & mask != 0 {
                throw HandshakeError(
                    .misaligned, "mapping \(i): \(name) 0x\(String(value, radix: 16)) is not a multiple of page_size \(m.pageSize)")
            }
            guard m.size > 0 else { throw HandshakeError(.misaligned, "mapping \(i) has size 0") }
            guard m.baseHostVirtAddr.addingReportingOverflow(m.size).overflow == false else {
                throw HandshakeError(.misaligned, "mapping \(i): base_host_virt_addr + size overflows")
            }
            let (fileEnd, overflow) = m.offset.addingReportingOverflow(m.size)
            guard !overflow, fileEnd <= fileSize else {
                throw HandshakeError(
                    .outsideFile, "mapping \(i): bytes [\(m.offset), \(m.offset) + \(m.size)) are not inside the "
                        + "\(fileSize)-byte memory file")
            }
        }
        let sorted = mappings.sorted { $0.baseHostVirtAddr < $1.baseHostVirtAddr }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.end > b.baseHostVirtAddr {
            throw HandshakeError(
                .overlapping,
                "regions [0x\(String(a.baseHostVirtAddr, radix: 16)), 0x\(String(a.end, radix: 16))) and "
                    + "[0x\(String(b.baseHostVirtAddr, radix: 16)), 0x\(String(b.end, radix: 16))) overlap")
        }
        return sorted
    }
}
