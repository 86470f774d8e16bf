/// A bad CRIU command line or configuration file, with the message to show (`getopt`'s wording where it has one).
public struct CRIUCommandLineError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One word (or option with its argument) of a command line, as CRIU's `getopt_long` sees it.
public enum ScannedWord: Sendable, Equatable {
    /// A CRIU option, resolved to its long name, with its argument if it took one. `spelling` is how it was written.
    case option(CRIUOptionTable.Option, value: String?, spelling: String)
    /// An option CRIU does not know, passed on as written (a command's own options, or a mistake the command's
    /// parser reports).
    case foreign(String)
    /// A word that is not an option (an action name, or the value of a foreign option).
    case positional(String)
}

/// Reads a command line the way CRIU's `getopt_long` does (GNU rules, permuting): long options exact or abbreviated
/// to a unique prefix, `--opt=value` or `--opt value` for a required argument, only `--opt=value` for an optional
/// one; one-letter options alone or grouped (`-dD DIR`), a required argument glued or as the next word, an optional
/// one only glued (`-v4`, `-vvv`); `--` ends the options.
public enum OptionScanner {
    public static func scan(_ words: [String]) throws(CRIUCommandLineError) -> [ScannedWord] {
        var result: [ScannedWord] = []
        var index = 0
        func nextWord(orFail message: String) throws(CRIUCommandLineError) -> String {
            guard index < words.count else { throw CRIUCommandLineError(message) }
            defer { index += 1 }
            return words[index]
        }
        while index < words.count {
            let word = words[index]
            index += 1
            if word == "--" {
                result.append(.foreign(word))
                result += words[index...].map { ScannedWord.positional($0) }
                break
            }
            if word.hasPrefix("--") {
                let body = word.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                let glued = body.firstIndex(of: "=").map { String(body[body.index(after: $0)...]) }
                guard let option = try CRIUOptionTable.resolve(name) else {
                    result.append(.foreign(word))
                    continue
                }
                switch option.argument {
                case .none:
                    guard glued == nil else {
                        throw CRIUCommandLineError("option '--\(option.name)' doesn't allow an argument")
                    }
                    result.append(.option(option, value: nil, spelling: word))
                case .optional:
                    result.append(.option(option, value: glued, spelling: word))
                case .required:
                    let value: String
                    if let glued { value = glued } else {
                        value = try nextWord(orFail: "option '--\(option.name)' requires an argument")
                    }
                    result.append(.option(option, value: value, spelling: glued == nil ? "\(word) \(value)" : word))
                }
                continue
            }
            guard word.hasPrefix("-"), word.count > 1 else {
                result.append(.positional(word))
                continue
            }
            // A group of one-letter options. A letter CRIU does not know leaves the whole word to the command.
            let letters = Array(word.dropFirst())
            guard CRIUOptionTable.shortOptions[letters[0]] != nil else {
                result.append(.foreign(word))
                continue
            }
            var position = 0
            while position < letters.count {
                let letter = letters[position]
                position += 1
                guard let option = CRIUOptionTable.shortOptions[letter] else {
                    throw CRIUCommandLineError("invalid option -- '\(letter)' (in '\(word)')")
                }
                let rest = position < letters.count ? String(letters[position...]) : nil
                switch option.argument {
                case .none:
                    result.append(.option(option, value: nil, spelling: "-\(letter)"))
                    continue
                case .optional:
                    result.append(.option(option, value: rest, spelling: "-\(letter)\(rest ?? "")"))
                case .required:
                    let value: String
                    if let rest { value = rest } else {
                        value = try nextWord(orFail: "option requires an argument -- '\(letter)'")
                    }
                    result.append(.option(option, value: value, spelling: rest == nil ? "-\(letter) \(value)" : "-\(letter)\(value)"))
                }
                break  // an argument (or its absence, for an optional one) ends the group
            }
        }
        return result
    }
}
