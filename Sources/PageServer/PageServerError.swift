/// What went wrong talking to (or serving) a page server, in words that name the culprit.
public struct PageServerError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The peer broke the protocol (a wrong reply, garbage): retrying will not help.
        case protocolViolation
        /// The connection failed (refused, reset, closed, stalled): a reconnect may help.
        case connection
        /// Bad configuration (an address that does not parse, ...).
        case configuration
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
