// STAND-IN, to be replaced: the smallest proto2 wire codec the stand-in image reader/writer needs.

#if canImport(Glibc)
import Glibc
#endif

enum StandInWire {
    static let commonMagic: UInt32 = 0x5456_4319
    static let inventoryMagic: UInt32 = 0x5831_3116
    static let pagemapMagic: UInt32 = 0x5608_4025
    static let mmMagic: UInt32 = 0x5749_2820
    static let pstreeMagic: UInt32 = 0x5027_3030

    /// Field number → values (varints as UInt64, length-delimited as bytes).
    struct Message {
        var varints: [Int: [UInt64]] = [:]
        var bytes: [Int: [[UInt8]]] = [:]
        func u64(_ field: Int) -> UInt64? { varints[field]?.last }
    }

    static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }
    static func appendField(_ field: Int, varint value: UInt64, to out: inout [UInt8]) {
        appendVarint(UInt64(field << 3), to: &out)
        appendVarint(value, to: &out)
    }
    static func appendField(_ field: Int, bytes value: [UInt8], to out: inout [UInt8]) {
        appendVarint(UInt64(field << 3 | 2), to: &out)
        appendVarint(UInt64(value.count), to: &out)
        out += value
    }

    static func decode(_ data: ArraySlice<UInt8>, file: String) throws(ImageError) -> Message {
        var message = Message()
        var i = data.startIndex
        func varint() throws(ImageError) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard i < data.endIndex, shift < 64 else { throw ImageError(file: file, problem: "truncated varint") }
                let b = data[i]
                i += 1
                value |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return value }
                shift += 7
            }
        }
        while i < data.endIndex {
            let key = try varint()
            let field = Int(key >> 3)
            switch key & 7 {
            case 0: message.varints[field, default: []].append(try varint())
            case 1:
                guard i + 8 <= data.endIndex else { throw ImageError(file: file, problem: "truncated fixed64") }
                i += 8
            case 5:
                guard i + 4 <= data.endIndex else { throw ImageError(file: file, problem: "truncated fixed32") }
                i += 4
            case 2:
                let n = Int(try varint())
                guard n >= 0, i + n <= data.endIndex else { throw ImageError(file: file, problem: "truncated field") }
                message.bytes[field, default: []].append(Array(data[i..<(i + n)]))
                i += n
            default: throw ImageError(file: file, problem: "bad wire type in field \(field)")
            }
        }
        return message
    }

    /// Reads an image file: magic(s) then `u32 length + message` records.
    static func readImage(_ path: String, magic: UInt32) throws(ImageError) -> [Message] {
        let name = String(path.split(separator: "/").last ?? "")
        let bytes = try readFile(path)
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        var at = 0
        if magic != inventoryMagic {
            guard bytes.count >= 4, u32(0) == commonMagic else { throw ImageError(file: name, problem: "bad magic") }
            at = 4
        }
        guard bytes.count >= at + 4, u32(at) == magic else { throw ImageError(file: name, problem: "bad magic") }
        at += 4
        var messages: [Message] = []
        while at < bytes.count {
            guard at + 4 <= bytes.count else { throw ImageError(file: name, problem: "truncated length") }
            let n = Int(u32(at))
            at += 4
            guard at + n <= bytes.count else { throw ImageError(file: name, problem: "truncated message") }
            messages.append(try decode(bytes[at..<(at + n)], file: name))
            at += n
        }
        return messages
    }

    static func imageBytes(magic: UInt32, messages: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        if magic != inventoryMagic { u32(commonMagic) }
        u32(magic)
        for m in messages {
            u32(UInt32(m.count))
            out += m
        }
        return out
    }

    static func readFile(_ path: String) throws(ImageError) -> [UInt8] {
        let name = String(path.split(separator: "/").last ?? "")
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ImageError(file: name, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ImageError(file: name, problem: String(cString: strerror(errno))) }
            if n == 0 { return out }
            out += chunk[0..<n]
        }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws(ImageError) {
        let name = String(path.split(separator: "/").last ?? "")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ImageError(file: name, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ImageError(file: name, problem: String(cString: strerror(errno))) }
            done += n
        }
    }
}
