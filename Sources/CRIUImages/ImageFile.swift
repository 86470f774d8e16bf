#if canImport(Glibc)
import Glibc
import LinuxSupport
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SwiftProtobuf

/// The kinds of image file this module reads and writes, with their magic numbers.
enum ImageKind: Sendable {
    case inventory, pstree, mm, pagemap, core

    /// `IMG_COMMON_MAGIC`: the first word of every image except `inventory.img`.
    static let commonMagic: UInt32 = 0x5456_4319

    /// The type magic (for inventory, the file's first and only magic word).
    var magic: UInt32 {
        switch self {
        case .inventory: 0x5831_3116
        case .pstree: 0x5027_3030
        case .mm: 0x5749_2820
        case .pagemap: 0x5608_4025
        case .core: 0x5505_3847
        }
    }

    var name: String {
        switch self {
        case .inventory: "inventory"
        case .pstree: "pstree"
        case .mm: "mm"
        case .pagemap: "pagemap"
        case .core: "core"
        }
    }

    /// The magic words at the start of a file of this kind.
    var header: [UInt32] { self == .inventory ? [magic] : [Self.commonMagic, magic] }
}

func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

/// A metadata image file read whole into memory, its magic checked and its message framing
/// (`u32` little-endian length + protobuf bytes, repeated to the end of the file) validated.
/// Only used for the small files (inventory, pstree, mm, pagemap, core); page data is never read here.
struct ImageFile {
    let path: String
    let kind: ImageKind
    let bytes: [UInt8]
    /// Byte ranges of the message payloads, in file order.
    let messages: [Range<Int>]

    init(path: String, kind: ImageKind) throws(ImageError) {
        self.path = path
        self.kind = kind
        let bytes = try readWholeFile(path)
        self.bytes = bytes

        var offset = 0
        for expected in kind.header {
            guard bytes.count - offset >= 4 else {
                throw ImageError(file: path, problem: "file too short for its magic (\(bytes.count) bytes)")
            }
            let found = bytes.loadLittleEndianUInt32(at: offset)
            guard found == expected else {
                let expectedName = expected == ImageKind.commonMagic ? "image" : kind.name
                throw ImageError(
                    file: path, problem: "bad magic \(hex(found)) (expected \(expectedName) \(hex(expected)))")
            }
            offset += 4
        }

        var messages: [Range<Int>] = []
        while offset < bytes.count {
            let remaining = bytes.count - offset
            guard remaining >= 4 else {
                throw ImageError(
                    file: path,
                    problem: "truncated message \(messages.count): \(remaining) byte(s) at offset \(offset)"
                        + " where a 4-byte length was expected")
            }
            let length = Int(bytes.loadLittleEndianUInt32(at: offset))
            guard length <= remaining - 4 else {
                throw ImageError(
                    file: path,
                    problem: "truncated message \(messages.count): length \(length) at offset \(offset) runs"
                        + " beyond the end of the file (\(remaining - 4) byte(s) left)")
            }
            messages.append(offset + 4 ..< offset + 4 + length)
            offset += 4 + length
        }
        self.messages = messages
    }

    /// Decodes message `index` as `M`, naming `what` (the proto message name) in errors.
    func decode<M: SwiftProtobuf.Message>(_: M.Type, at index: Int, as what: String) throws(ImageError) -> M {
        let range = messages[index]
        var options = BinaryDecodingOptions()
        options.discardUnknownFields = true
        do {
            return try M(serializedBytes: bytes[range], options: options)
        } catch {
            let reason: String
            switch error as? BinaryDecodingError {
            case .missingRequiredFields?: reason = "required fields are missing"
            case .truncated?: reason = "truncated protobuf data"
            case .malformedProtobuf?: reason = "malformed protobuf data"
            case .invalidUTF8?: reason = "invalid UTF-8"
            default: reason = "\(error)"
            }
            throw ImageError(
                file: path,
                problem: "undecodable protobuf: \(what) (message \(index), \(range.count) bytes at offset"
                    + " \(range.lowerBound - 4)): \(reason)")
        }
    }
}

extension Array where Element == UInt8 {
    func loadLittleEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16
            | UInt32(self[offset + 3]) << 24
    }
}

// MARK: - POSIX helpers


/// Reads a whole (metadata) file. A missing file is reported as "missing file".
func readWholeFile(_ path: String) throws(ImageError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        let code = errno
        throw ImageError(file: path, problem: code == ENOENT ? "missing file" : "cannot open: \(SystemCallError.reason(code))")
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw ImageError(file: path, problem: "cannot stat: \(SystemCallError.reason(errno))") }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw ImageError(file: path, problem: "not a regular file") }
    let size = Int(st.st_size)
    var bytes = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
        let n = bytes.withUnsafeMutableBytes { buffer in
            retryingOnInterrupt { read(fd, buffer.baseAddress.map { $0 + done }, size - done) }
        }
        if n < 0 {
            throw ImageError(file: path, problem: "read failed: \(SystemCallError.reason(errno))")
        }
        if n == 0 { break }  // shrank while reading
        done += n
    }
    if done < size { bytes.removeLast(size - done) }
    return bytes
}

/// What `stat` says about a path.
enum FileStatus {
    case missing
    case regular(size: UInt64)
    case directory
    case other
}

func fileStatus(_ path: String) throws(ImageError) -> FileStatus {
    var st = stat()
    guard stat(path, &st) == 0 else {
        let code = errno
        if code == ENOENT || code == ENOTDIR { return .missing }
        throw ImageError(file: path, problem: "cannot stat: \(SystemCallError.reason(code))")
    }
    switch st.st_mode & S_IFMT {
    case S_IFREG: return .regular(size: UInt64(st.st_size))
    case S_IFDIR: return .directory
    default: return .other
    }
}

/// Whether a directory entry (possibly a dangling symlink) exists at `path`.
func entryExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}
