import Foundation

/// A CRIU command line (and CRIU's configuration files) rewritten for one of our swift-argument-parser commands:
/// every CRIU spelling becomes the command's one spelling (`--name=value`, `--name`, `--no-name`), the verbosity is
/// folded into one `--verbosity=N`, options the command ignores become `--criu-ignored=...` notes, and the words that
/// are not CRIU's (the command's own options) pass through unchanged.
///
/// The sources, in CRIU's order, each overriding the ones before (`criu/config.c`): `/etc/criu/default.conf`,
/// `$HOME/.criu/default.conf` (both skipped with `--no-default-config` or `--config`), the file named by
/// `$CRIU_CONFIG_FILE`, the file of `--config FILE`, and finally the command line. Verbosity adds up across them as
/// in CRIU (`verbosity` in a file and `-v` on the command line is level 4). Unlike CRIU, a configuration file named
/// explicitly (`--config`, `$CRIU_CONFIG_FILE`) that cannot be read is an error rather than silently skipped.
public struct CRIUCommandLine: Sendable, Equatable {
    /// The hidden options carrying notes to the command, which logs them once its log is set up.
    public static let ignoredOption = "criu-ignored"
    public static let warningOption = "criu-warning"
    /// For tests only: the default configuration files, `:`-separated, instead of CRIU's two.
    public static let defaultFilesVariable = "LP_CRIU_DEFAULT_CONFIG_FILES"

    /// What to hand to the argument parser: the action word first.
    public var arguments: [String]
    /// The configuration files read, in order.
    public var configFiles: [String]

    /// CRIU's default configuration files for this environment (or the test override).
    public static func defaultConfigFiles(environment: [String: String]) -> [String] {
        if let override = environment[defaultFilesVariable] {
            return override.split(separator: ":").map(String.init)
        }
        var files = ["/etc/criu/default.conf"]
        if let home = environment["HOME"] { files.append(home + "/.criu/default.conf") }
        return files
    }

    /// Rewrites `arguments` (without the program name; the action word may appear anywhere, as in CRIU, or not at
    /// all) for the command described by `spec`.
    public init(
        _ arguments: [String], for spec: CRIUCommandSpec,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(CRIUCommandLineError) {
        // As CRIU does before anything else: help, even when the rest (or a configuration file) is broken.
        if arguments.prefix(while: { $0 != "--" }).contains(where: { $0 == "--help" || $0 == "-h" }) {
            self.arguments = [spec.action, "--help"]
            configFiles = []
            return
        }
        let commandLine = try OptionScanner.scan(arguments)
        var actionSeen = false
        var passed: [ScannedWord] = []
        for word in commandLine {
            if case .positional(spec.action) = word, !actionSeen {
                actionSeen = true
                continue
            }
            if case .option(let option, _, _) = word, option.name == "help" {  // an abbreviation, or in a group
                self.arguments = [spec.action, "--help"]
                configFiles = []
                return
            }
            passed.append(word)
        }

        // Which configuration files (CRIU looks at the command line only, never inside a file, for these).
        var explicitFile: String?
        var useDefaults = true
        for case .option(let option, let value, _) in passed {
            if option.name == "no-default-config" { useDefaults = false }
            if option.name == "config" {
                explicitFile = value
                useDefaults = false
            }
        }
        var files: [(path: String, mustExist: Bool)] = []
        if useDefaults { files += Self.defaultConfigFiles(environment: environment).map { ($0, false) } }
        if let fromEnvironment = environment["CRIU_CONFIG_FILE"], !fromEnvironment.isEmpty { files.append((fromEnvironment, true)) }
        if let explicitFile { files.append((explicitFile, true)) }

        var folder = Folder(spec: spec)
        var read: [String] = []
        for (path, mustExist) in files {
            if !mustExist && !FileManager.default.fileExists(atPath: path) { continue }
            let file = try CRIUConfigFile(path: path)
            read.append(path)
            for statement in file.statements {
                try folder.add(Self.scan(statement, in: file, folder: &folder), origin: "\(path):\(statement.line)")
            }
        }
        for word in passed { try folder.add([word], origin: nil) }
        self.arguments = [spec.action] + folder.finish()
        configFiles = read
    }

    /// One configuration-file line as the command-line scanner would see `--name value`.
    private static func scan(
        _ statement: CRIUConfigFile.Statement, in file: CRIUConfigFile, folder: inout Folder
    ) throws(CRIUCommandLineError) -> [ScannedWord] {
        let place = "\(file.path):\(statement.line)"
        let name = String(statement.name.prefix { $0 != "=" })
        let glued = statement.name.firstIndex(of: "=").map { String(statement.name[statement.name.index(after: $0)...]) }
        let option: CRIUOptionTable.Option?
        do {
            option = try CRIUOptionTable.resolve(name)
        } catch {
            throw CRIUCommandLineError("\(place): \(error.message)")
        }
        guard let option else {
            // Not CRIU's: one of the command's own options (its parser reports a mistake).
            let value = glued ?? statement.value
            return [.foreign("--\(name)" + (value.map { "=\($0)" } ?? ""))]
        }
        if ["config", "no-default-config"].contains(option.name) {
            folder.ignore("--\(option.name) in a configuration file (\(place)) has no effect, as in CRIU")
            return []
        }
        switch option.argument {
        case .none:
            guard glued == nil else { throw CRIUCommandLineError("\(place): option '\(option.name)' doesn't allow an argument") }
            if let stray = statement.value {
                folder.warn("\(place): '\(option.name)' takes no value; '\(stray)' is ignored, as CRIU does")
            }
            return [.option(option, value: nil, spelling: statement.name)]
        case .optional:
            if let stray = statement.value {
                folder.warn("\(place): CRIU reads '\(option.name) \(stray)' as '\(option.name)' and ignores '\(stray)'; "
                    + "write '\(option.name)=\(stray)'")
            }
            return [.option(option, value: glued, spelling: statement.name)]
        case .required:
            guard let value = glued ?? statement.value else {
                throw CRIUCommandLineError("\(place): option '\(option.name)' requires an argument")
            }
            return [.option(option, value: value, spelling: statement.name)]
        }
    }
}

/// Turns scanned words from every source, in order, into the command's arguments.
private struct Folder {
    let spec: CRIUCommandSpec
    /// CRIU's `DEFAULT_LOGLEVEL`.
    var verbosity = 2
    var verbositySeen = false
    var output: [String] = []
    var notes: [String] = []

    init(spec: CRIUCommandSpec) { self.spec = spec }

    mutating func ignore(_ note: String) { notes.append("--\(CRIUCommandLine.ignoredOption)=\(note)") }
    mutating func warn(_ note: String) { notes.append("--\(CRIUCommandLine.warningOption)=\(note)") }

    mutating func add(_ words: [ScannedWord], origin: String?) throws(CRIUCommandLineError) {
        let from = origin.map { " (\($0))" } ?? ""
        for word in words {
            switch word {
            case .foreign(let text), .positional(let text):
                output.append(text)
            case .option(let option, let value, let spelling):
                if let reason = spec.refused[option.name] {
                    throw CRIUCommandLineError("\(spelling)\(from): \(reason)")
                }
                switch option.name {
                case "verbosity":
                    verbositySeen = true
                    verbosity = Self.verbosity(after: verbosity, value: value)
                case "config", "no-default-config":
                    break  // chose the files already
                case "version":
                    output.append("--version")
                default:
                    if let meaning = spec.meanings[option.name] {
                        output.append("--\(meaning)" + (value.map { "=\($0)" } ?? ""))
                    } else {
                        ignore("\(spelling)\(from): no meaning for \(spec.action), ignored")
                    }
                }
            }
        }
    }

    /// CRIU's `-v` arithmetic: `-v`/`--verbosity` adds one, `-vvv` (read as `-v` with argument `vv`) adds three,
    /// `-vN`/`--verbosity=N` sets N (as `atoi`: leading digits, else 0).
    static func verbosity(after level: Int, value: String?) -> Int {
        guard let value else { return level + 1 }
        if value.first == "v" { return level + value.count + 1 }
        var trimmed = value.drop { $0 == " " || $0 == "\t" }
        let sign = trimmed.first == "-" ? -1 : 1
        if trimmed.first == "-" || trimmed.first == "+" { trimmed = trimmed.dropFirst() }
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        return sign * (Int(digits.prefix(9)) ?? 0)
    }

    func finish() -> [String] {
        // The folded options first: the pass-through words may end in `--` and positionals.
        (verbositySeen ? ["--verbosity=\(verbosity)"] : []) + notes + output
    }
}
