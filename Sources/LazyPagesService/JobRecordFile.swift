import LinuxSupport

/// A job's `JobRecord` in a memory file of its own (`/memfd:lazy-pages-job-ID`), the descriptor kept in systemd's
/// descriptor store: rewritten in place (slot after slot, see `JobRecordFormat`) as the job progresses, so the store
/// always holds the latest whole record without a new message to systemd.
final class JobRecordFile: @unchecked Sendable {
    let file: SharedMemoryFile
    var descriptor: Int32 { file.descriptor }
    private var sequence: UInt64 = 0

    /// A new, empty record file for job `jobID` (`/memfd:lazy-pages-job-ID` in /proc/PID/fd).
    init(jobID: String) throws {
        file = try SharedMemoryFile(name: "lazy-pages-job-\(jobID)", size: 2 * JobRecordFormat.slotSize)
    }

    /// A record file that came back from the store (`descriptor` is owned by this object from now on).
    init(adopting descriptor: Int32) throws {
        file = try SharedMemoryFile(mapping: descriptor, taking: true)
    }

    /// Writes `record` over the older slot. Not thread-safe: the registry serializes the writes of a job.
    func write(_ record: JobRecord) throws {
        sequence += 1
        let bytes = try JobRecordFormat.encode(record, sequence: sequence)
        let slot = Int(sequence % 2) * JobRecordFormat.slotSize
        bytes.withUnsafeBytes { (file.base + slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// The newest whole record in the file; later writes continue its sequence.
    func read() -> Result<JobRecord, JobRecordFormat.Unusable> {
        let length = min(file.size, 2 * JobRecordFormat.slotSize)
        let bytes = Array(UnsafeRawBufferPointer(start: file.base, count: length))
        switch JobRecordFormat.decode(file: bytes) {
        case .success(let (record, sequence)):
            self.sequence = sequence
            return .success(record)
        case .failure(let reason):
            return .failure(reason)
        }
    }
}
