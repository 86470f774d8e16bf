import LinuxSupport

/// The order in which a restore faulted its pages, by image pid and dump-time page address: recorded by one restore
/// (`RestoreEngine.startRecordingProfile`), delivered first by a later restore of the same image
/// (`RestoreEngine.prefetch`).
///
/// File format (text, one entry a line, written in fault order, no duplicates):
///
///     lazy-pages-profile 1
///     <image pid, decimal> <dump-time page address, hex with 0x>
///     ...
///
/// Addresses are 4 KiB aligned. A file holds at most `maxEntries` entries (16 GiB of pages); a longer file, or a
/// malformed line, is refused with an error naming the line.
public struct WorkingSetProfile: Sendable, Equatable {
    public struct Entry: Hashable, Sendable {
        public var imagePid: Int32
        public var dumpAddress: UInt64
        public init(imagePid: Int32, dumpAddress: UInt64) {
            self.imagePid = imagePid
            self.dumpAddress = dumpAddress
        }
    }

    public static let header = "lazy-pages-profile 1"
    /// The most entries a profile holds (4 Mi pages of 4 KiB: 16 GiB), at most about 120 MiB of text.
    public static let maxEntries = 4 << 20

    /// In fault order, without duplicates.
    public private(set) var entries: [Entry]

    public init(entries: [Entry]) {
        var seen = Set<Entry>()
        self.entries = entries.filter { seen.insert($0).inserted }
    }

    /// The dump addresses of one image pid, in profile order.
    public func addresses(of imagePid: Int32) -> [UInt64] {
        entries.compactMap { $0.imagePid == imagePid ? $0.dumpAddress : nil }
    }

    public var text: String {
        var out = Self.header + "\n"
        out.reserveCapacity(entries.count * 24 + 32)
        for entry in entries { out += "\(entry.imagePid) 0x\(String(entry.dumpAddress, radix: 16))\n" }
        return out
    }

    /// Parses the file format above.
    public init(parsing text: String) throws(ProfileError) {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first, first == Self.header else {
            throw ProfileError("not a lazy-pages profile: the first line must be \"\(Self.header)\"")
        }
        guard lines.count - 1 <= Self.maxEntries else {
            throw ProfileError("\(lines.count - 1) entries, more than the \(Self.maxEntries) a profile may hold")
        }
        var parsed: [Entry] = []
        parsed.reserveCapacity(lines.count - 1)
        for (index, line) in lines.enumerated().dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count == 2, let pid = Int32(fields[0]), pid > 0, fields[1].hasPrefix("0x"),
                  let address = UInt64(fields[1].dropFirst(2), radix: 16)
            else {
                throw ProfileError("line \(index + 1): expected \"<pid> 0x<address>\", found \"\(line.prefix(80))\"")
            }
            guard address % UInt64(basePageSize) == 0 else {
                throw ProfileError("line \(index + 1): address 0x\(String(address, radix: 16)) is not page aligned")
            }
            parsed.append(Entry(imagePid: pid, dumpAddress: address))
        }
        self.init(entries: parsed)
    }
}

/// A profile file that cannot be used; the message names what is wrong.
public struct ProfileError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Records faults in order, once each, up to `WorkingSetProfile.maxEntries`.
final class ProfileRecorder {
    private var seen = Set<WorkingSetProfile.Entry>()
    private(set) var entries: [WorkingSetProfile.Entry] = []

    func record(_ entry: WorkingSetProfile.Entry) {
        guard entries.count < WorkingSetProfile.maxEntries, seen.insert(entry).inserted else { return }
        entries.append(entry)
    }
}
