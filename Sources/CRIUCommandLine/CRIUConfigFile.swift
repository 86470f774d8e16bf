import Foundation
import LinuxSupport

/// A CRIU configuration file (`criu(8)`, "Configuration files"): one option per line, its long name without the
/// leading dashes, then optionally one value after a space or tab, which may be in double quotes (`\"` for a quote
/// inside). `#` starts a comment, on its own line or after the option. Blank lines are allowed. Everything else
/// (a second value, text after a closing quote, an unterminated quote) is an error naming the file and line.
public struct CRIUConfigFile: Sendable, Equatable {
    /// One line's option.
    public struct Statement: Sendable, Equatable {
        /// The option as written, without dashes; may carry a glued value (`verbosity=4`), as CRIU allows.
        public var name: String
        /// The value after the space, if any.
        public var value: String?
        /// 1-based line number.
        public var line: Int

        public init(name: String, value: String?, line: Int) {
            self.name = name
            self.value = value
            self.line = line
        }
    }

    public let path: String
    public let statements: [Statement]

    /// Reads and parses the file at `path`.
    public init(path: String) throws(CRIUCommandLineError) {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw CRIUCommandLineError("cannot read the configuration file \(path): \(Self.reason(error))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CRIUCommandLineError("the configuration file \(path) is not UTF-8 text")
        }
        try self.init(path: path, text: text)
    }

    public init(path: String, text: String) throws(CRIUCommandLineError) {
        self.path = path
        var statements: [Statement] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let statement = try Self.parse(line: Substring(rawLine), number: index + 1, path: path) {
                statements.append(statement)
            }
        }
        self.statements = statements
    }

    private static func parse(line: Substring, number: Int, path: String) throws(CRIUCommandLineError) -> Statement? {
        func bad(_ problem: String) -> CRIUCommandLineError {
            CRIUCommandLineError(
                "\(path):\(number): \(problem) (CRIU's format: one option per line, `name` or `name value`, "
                    + "without the leading dashes; see criu(8))")
        }
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        var rest = line.drop(while: isBlank)
        guard let first = rest.first, first != "#" else { return nil }
        let name = String(rest.prefix { !isBlank($0) })
        rest = rest.dropFirst(name.count).drop(while: isBlank)
        guard let start = rest.first, start != "#" else { return Statement(name: name, value: nil, line: number) }

        var value = ""
        if start == "\"" {
            rest = rest.dropFirst()
            var closed = false
            while let character = rest.first {
                rest = rest.dropFirst()
                if character == "\\", rest.first == "\"" {
                    value.append("\"")
                    rest = rest.dropFirst()
                } else if character == "\"" {
                    closed = true
                    break
                } else {
                    value.append(character)
                }
            }
            guard closed else { throw bad("the value of '\(name)' has no closing quote") }
        } else {
            while let character = rest.first, !isBlank(character), character != "#" {
                rest = rest.dropFirst()
                if character == "\\", rest.first == "\"" {
                    value.append("\"")
                    rest = rest.dropFirst()
                } else {
                    value.append(character)
                }
            }
        }
        let trailing = rest.drop(while: isBlank)
        guard trailing.isEmpty || trailing.first == "#" else {
            throw bad("'\(name)' has more than one value ('\(value)', then '\(trailing)')")
        }
        return Statement(name: name, value: value, line: number)
    }

    private static func reason(_ error: Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return SystemCallError.reason(Int32(underlying.code))
        }
        if nsError.domain == NSCocoaErrorDomain && nsError.code == NSFileReadNoSuchFileError {
            return "No such file or directory"
        }
        return nsError.localizedDescription
    }
}
