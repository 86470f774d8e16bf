/// Why a Firecracker handshake (or the restore behind it) was refused. `code` says which rule was broken; the
/// message names the value that broke it.
public struct HandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public static let hungUp = Code(name: "hung up")
        public static let tooLarge = Code(name: "message too large")
        public static let noDescriptor = Code(name: "no descriptor")
        public static let tooManyDescriptors = Code(name: "too many descriptors")
        public static let notUserfaultfd = Code(name: "not a userfaultfd")
        public static let malformedJSON = Code(name: "malformed JSON")
        public static let noMappings = Code(name: "no mappings")
        public static let badPageSize = Code(name: "bad page size")
        public static let misaligned = Code(name: "misaligned region")
        public static let overlapping = Code(name: "overlapping regions")
        public static let outsideFile = Code(name: "region outside the memory file")
        public static let socket = Code(name: "socket error")
        public var description: String { name }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "Firecracker handshake refused (\(code)): \(message)" }
}
