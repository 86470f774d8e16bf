import ArgumentParser
import Logging

/// The options every CRIU daemon we replace shares (`criu lazy-pages`, `criu page-server`), defined once. The
/// spellings here are the canonical ones ``CRIUCommandLine`` rewrites CRIU's into (`-D DIR`, `-DDIR`, `--images-dir DIR`
/// and an abbreviation like `--images DIR` all arrive as `--images-dir=DIR`; every `-v` form as one `--verbosity=N`).
public struct CRIUDaemonOptions: ParsableArguments {
    public init() {}

    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Directory of the CRIU images.")
    public var imagesDirectory: String = "."

    @Option(name: [.customShort("W"), .customLong("work-dir")],
            help: "Where relative log files (and lazy-pages.socket) go (default: the images directory).")
    public var workDirectory: String?

    @Option(name: [.customShort("o"), .customLong("log-file")],
            help: "Write the log to this file (relative to the work directory) instead of stderr.")
    public var logFile: String?

    @Option(name: [.customShort("v"), .customLong("verbosity")],
            help: ArgumentHelp(
                "CRIU's log level: 0-1 errors, 2 warnings (default), 3 info, 4 debug, 5 trace.",
                discussion: "As in CRIU: -v adds one level, -vvv three; -v4 or --verbosity=4 sets it.",
                valueName: "level"))
    public var verbosity: Int = 2

    @Flag(name: .customLong("daemon"), inversion: .prefixedNo, exclusivity: .chooseLast,
          help: "-d, --daemon: detach and run in the background once listening (also --restore-detached, as in CRIU).")
    public var daemon = false

    @Option(name: .customLong("pidfile"), help: "Write the daemon's pid to this file.")
    public var pidFile: String?

    @Option(name: .customLong("status-fd"), help: "Write one byte to this descriptor (then close it) once listening.")
    public var statusFD: Int32?

    @Option(name: .customLong(CRIUCommandLine.ignoredOption), help: .hidden)
    public var ignoredNotes: [String] = []

    @Option(name: .customLong(CRIUCommandLine.warningOption), help: .hidden)
    public var warningNotes: [String] = []

    /// The work directory: `--work-dir`, else the images directory (as in CRIU).
    public var resolvedWorkDirectory: String { workDirectory ?? imagesDirectory }

    /// The log file's path, relative ones taken from the work directory.
    public var logPath: String? {
        logFile.map { $0.hasPrefix("/") ? $0 : resolvedWorkDirectory + "/" + $0 }
    }

    /// The pidfile's path, relative ones taken from the work directory (CRIU writes it after `chdir(work-dir)`).
    public var pidPath: String? {
        pidFile.map { $0.hasPrefix("/") ? $0 : resolvedWorkDirectory + "/" + $0 }
    }

    /// Sets up logging at the chosen level (to the log file, if any), then logs what the command line ignored.
    public func bootstrapLog(label: String) throws {
        try bootstrapLogging(level: criuLogLevel(verbosity), file: logPath)
        let logger = Logger(label: label)
        for note in warningNotes { logger.warning("\(note)") }
        for note in ignoredNotes { logger.debug("\(note)") }
    }
}
