import Foundation
import Logging

/// CRIU's verbosity numbers (0 silent ... 4 debug) mapped to swift-log levels; 5 is trace.
public func criuLogLevel(_ level: Int) -> Logger.Level {
    switch level {
    case ...1: return .error
    case 2: return .warning
    case 3: return .info
    case 4: return .debug
    default: return .trace
    }
}

/// Whether log lines go to stderr (no `--log-file`); set once by `bootstrapLogging`, before any other thread runs.
nonisolated(unsafe) public private(set) var loggingToStandardError = true

/// A fatal error, said once: `<command>: <message>` on stderr; a critical log line too only when the log goes to a
/// file (on stderr, the log line would say the same thing a second time).
public func reportFatal(_ message: String, logger: Logger, command: String = "lazy-pagesd") {
    if !loggingToStandardError { logger.critical("\(message)") }
    FileHandle.standardError.write(Data("\(command): \(message)\n".utf8))
}

/// Sends every logger to stderr, or to `file` (appended), at `level`.
public func bootstrapLogging(level: Logger.Level, file: String?) throws {
    loggingToStandardError = file == nil
    let sink: LogSink
    if let file {
        // Never through a symlink, never into someone else's file (see OutputFile).
        do {
            sink = LogSink(handle: try OutputFile.openForAppending(file))
        } catch {
            throw LogFileError(path: file, reason: "\(error)")
        }
    } else {
        sink = LogSink(handle: .standardError)
    }
    LoggingSystem.bootstrap { label in
        var handler = LineLogHandler(label: label, sink: sink)
        handler.logLevel = level
        return handler
    }
}

public struct LogFileError: Error, CustomStringConvertible {
    var path: String
    var reason: String
    public var description: String { "cannot open the log file \(path): \(reason)" }
}

/// Where log lines go; one write per line.
final class LogSink: @unchecked Sendable {
    let handle: FileHandle
    private let lock = NSLock()
    init(handle: FileHandle) { self.handle = handle }
    func write(_ line: String) {
        lock.lock()
        handle.write(Data(line.utf8))
        lock.unlock()
    }
}

/// `2026-11-25T13:15:07.123Z lazy-pagesd info: message key=value ...`
struct LineLogHandler: LogHandler {
    let label: String
    let sink: LogSink
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = merged.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        let time = Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
        sink.write("\(time) \(label) \(event.level): \(event.message)\(fields)\n")
    }
}
