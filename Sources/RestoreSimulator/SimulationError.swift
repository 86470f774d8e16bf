/// Why a simulated restore could not run. The message says what failed, CRIU-style where CRIU has a message.
public struct SimulationError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
