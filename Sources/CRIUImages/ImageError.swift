/// A CRIU image set that cannot be read or does not hold together: names the offending file and what is
/// wrong with it. Every validation failure of ``ImageSet`` and ``ImageSet/process(pid:)`` is one of these,
/// raised before anything could be served from the images.
public struct ImageError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Path of the offending file (as built from the directory given to ``ImageSet/init(directory:)``).
    public var file: String
    /// What is wrong, e.g. `bad magic 0x12345678 (expected pagemap 0x56084025)`.
    public var problem: String

    /// Creates an error about `file`.
    public init(file: String, problem: String) {
        self.file = file
        self.problem = problem
    }

    /// `"<file>: <problem>"`.
    public var description: String { "\(file): \(problem)" }
}
