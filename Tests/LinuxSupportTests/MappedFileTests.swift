import Foundation
import LinuxSupport
import Testing
import TestSupport

@Suite struct MappedFileTests {
    @Test("populate puts every page of the mapped file in our page tables (/proc/self/pagemap) without changing a byte")
    func populateMapsEveryPage() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pages = 300  // not a multiple of the 8-page step below: the last step is short
        var bytes = [UInt8](repeating: 0, count: pages * 4096)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i / 4096) }
        let path = root + "/pages-1.img"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let file = try MappedFile(path: path)
        let base = try #require(file.base)
        #expect(try Self.presentPages(base, pages) == 0, "a fresh mapping nobody touched has no page mapped")
        #expect(file.populate(step: 8 * 4096))
        #expect(try Self.presentPages(base, pages) == pages)
        #expect(memcmp(base, bytes, bytes.count) == 0)
        // Stopped at once: nothing is asked of the kernel, and that is not a refusal.
        #expect(file.populate(stop: { true }))
    }

    /// How many of the `count` pages from `base` our page tables map (bit 63 of their `/proc/self/pagemap` entry).
    static func presentPages(_ base: UnsafeRawPointer, _ count: Int) throws -> Int {
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/pagemap"))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(UInt(bitPattern: base) / 4096) * 8)
        let data = try #require(try handle.read(upToCount: count * 8))
        return (0..<count).filter { i in
            let entry = data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) }
            return entry >> 63 == 1
        }.count
    }
}
