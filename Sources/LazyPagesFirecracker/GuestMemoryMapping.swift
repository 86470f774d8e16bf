import Foundation

/// One guest memory region as Firecracker describes it in its handshake: where the region lives in Firecracker's
/// address space, how long it is, where its bytes start in the snapshot memory file, and its page size.
///
/// Firecracker also sends `page_size_kib` (which, despite the name, holds bytes); it is ignored.
public struct GuestMemoryMapping: Sendable, Hashable, Codable {
    public var baseHostVirtAddr: UInt64
    public var size: UInt64
    public var offset: UInt64
    public var pageSize: UInt64

    public init(baseHostVirtAddr: UInt64, size: UInt64, offset: UInt64, pageSize: UInt64) {
        self.baseHostVirtAddr = baseHostVirtAddr
        self.size = size
        self.offset = offset
        self.pageSize = pageSize
    }

    enum CodingKeys: String, CodingKey {
        case baseHostVirtAddr = "base_host_virt_addr"
        case size, offset
        case pageSize = "page_size"
    }

    /// The region's end in Firecracker's address space (callers check for overflow first).
    public var end: UInt64 { baseHostVirtAddr + size }

    /// Decodes the handshake's UTF-8 JSON array of mappings.
    public static func decodeList(_ bytes: [UInt8]) throws(HandshakeError) -> [GuestMemoryMapping] {
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw HandshakeError(.malformedJSON, "the mappings are not UTF-8 text")
        }
        do {
            return try JSONDecoder().decode([GuestMemoryMapping].self, from: Data(bytes))
        } catch let DecodingError.keyNotFound(key, context) {
            throw HandshakeError(.malformedJSON, "mapping \(index(context)) has no \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw HandshakeError(
                .malformedJSON, "\(path(context)) is not an unsigned 64-bit integer or the array is not one of objects")
        } catch let DecodingError.dataCorrupted(context) {
            throw HandshakeError(
                .malformedJSON,
                context.codingPath.isEmpty
                    ? "not valid JSON (\(context.debugDescription))"
                    : "\(path(context)) is not valid (\(context.debugDescription))")
        } catch {
            throw HandshakeError(.malformedJSON, "\(error)")
        }
    }

    private static func index(_ context: DecodingError.Context) -> String {
        context.codingPath.first?.intValue.map(String.init) ?? "?"
    }

    private static func path(_ context: DecodingError.Context) -> String {
        context.codingPath.isEmpty
            ? "the message"
            : context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }
}
