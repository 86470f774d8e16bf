import Foundation
import LazyPagesControl

/// What a successor of `lazy-pagesd serve` needs to re-adopt a job (after a crash, a SIGKILL, the OOM killer):
/// its id, owner, spec, state and progress, and how often it was adopted already. Kept in a memory file in
/// systemd's descriptor store (`JobRecordFile`), rewritten as the job progresses, and a last time when it ended:
/// an ended job's record stays in the store (alone: its uffds, sockets and journal are dropped) as long as the
/// daemon keeps the job in its list (`ServiceLimits.finishedJobsKept`), so that `lazy-pages status` still shows
/// how it ended after a restart.
struct JobRecord: Codable, Sendable, Equatable {
    struct Owner: Codable, Sendable, Equatable {
        var uid: UInt32
        var gid: UInt32
        /// The client that added the job (for the log only: it may be gone).
        var pid: Int32
    }

    var id: String
    var owner: Owner
    var spec: JobSpec
    /// The job's socket (the restorer's or the VM's), as the job reported it.
    var socket: String
    /// `listening` or `running`; `completed`, `failed` or `cancelled` once it ended.
    var state: JobState
    /// Why it failed or was cancelled (ended jobs only).
    var reason: String? = nil
    /// The engine's counters by name when the record was written (a successor continues from them).
    var counters: [String: Int]
    /// Seconds the restore had run when the record was written.
    var elapsedSeconds: Double
    /// Times the job was re-adopted by a restarted daemon, and when the last adoption was (Unix time).
    var restarts: Int
    var lastAdoptedAt: Double?
}

/// The byte layout of a `JobRecord` in its memory file: two slots, written in turn, so that a daemon killed in the
/// middle of a write always leaves the previous record whole.
///
///     slot (at 0 and at `slotSize`):
///       "LPJOBREC"  8 bytes, the magic
///       version     u32 little-endian (1)
///       sequence    u64, one more at every write (the newer valid slot wins)
///       length      u32, bytes of payload (at most slotSize - 28)
///       checksum    u32, CRC-32 (IEEE) of version, sequence, length and payload
///       payload     the record as JSON
///
/// A slot that is empty, has another magic, an unknown version, a bad length or checksum, or JSON that does not
/// decode is invalid; the newest valid slot is the record. None valid: the record is unusable, and says why.
enum JobRecordFormat {
    static let magic = Array("LPJOBREC".utf8)
    static let version: UInt32 = 1
    static let headerSize = 28
    static let slotSize = 64 << 10

    struct Unusable: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    static func encode(_ record: JobRecord, sequence: UInt64) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let payload = Array(try encoder.encode(record))
        guard payload.count <= slotSize - headerSize else {
            throw Unusable(description: "the record of job \(record.id) is \(payload.count) bytes (at most \(slotSize - headerSize))")
        }
        var fields: [UInt8] = []
        append(version, to: &fields)
        append(sequence, to: &fields)
        append(UInt32(payload.count), to: &fields)
        var bytes = magic + fields
        append(CRC32.checksum(fields + payload), to: &bytes)
        return bytes + payload
    }

    /// The record in one slot and its sequence number, or why the slot is not usable.
    static func decode(slot bytes: [UInt8]) -> Result<(JobRecord, UInt64), Unusable> {
        guard bytes.count >= headerSize, !bytes[0..<headerSize].allSatisfy({ $0 == 0 }) else {
            return .failure(Unusable(description: "empty"))
        }
        guard Array(bytes[0..<8]) == magic else { return .failure(Unusable(description: "not a job record (bad magic)")) }
        let version: UInt32 = load(bytes, at: 8)
        guard version == Self.version else {
            return .failure(Unusable(description: "record version \(version) is not known to this daemon (it reads \(Self.version))"))
        }
        let sequence: UInt64 = load(bytes, at: 12)
        let length = Int(load(bytes, at: 20) as UInt32)
        guard length <= slotSize - headerSize, headerSize + length <= bytes.count else {
            return .failure(Unusable(description: "bad length \(length)"))
        }
        let payload = Array(bytes[headerSize..<(headerSize + length)])
        let checksum: UInt32 = load(bytes, at: 24)
        guard CRC32.checksum(Array(bytes[8..<24]) + payload) == checksum else {
            return .failure(Unusable(description: "bad checksum"))
        }
        do {
            return .success((try JSONDecoder().decode(JobRecord.self, from: Data(payload)), sequence))
        } catch {
            return .failure(Unusable(description: "the payload does not decode: \(RequestHandler.describe(error))"))
        }
    }

    /// The newest valid record of a whole file (both slots).
    static func decode(file bytes: [UInt8]) -> Result<(JobRecord, UInt64), Unusable> {
        var reasons: [String] = []
        var best: (JobRecord, UInt64)?
        for slot in 0..<2 {
            let start = slot * slotSize
            let end = min(bytes.count, start + slotSize)
            let slice = start < end ? Array(bytes[start..<end]) : []
            switch decode(slot: slice) {
            case .success(let found):
                if best == nil || found.1 > best!.1 { best = found }
            case .failure(let reason):
                reasons.append("slot \(slot): \(reason.description)")
            }
        }
        if let best { return .success(best) }
        return .failure(Unusable(description: reasons.joined(separator: "; ")))
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    private static func load<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int) -> T {
        var value = T.zero
        for i in (0..<MemoryLayout<T>.size).reversed() { value = value << 8 | T(bytes[offset + i]) }
        return value
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`): detects a torn or overwritten record.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for byte in bytes { c = table[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
