import Foundation
import Logging

/// A logger for tests, on stderr: `level` and above (warnings and errors unless a test asks otherwise), everything
/// from debug up when `LP_TEST_LOG` is set.
public func testLogger(_ label: String = "test", level: Logger.Level = .warning) -> Logger {
    let chosen: Logger.Level = ProcessInfo.processInfo.environment["LP_TEST_LOG"] != nil ? .debug : level
    return Logger(label: label) { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = chosen
        return handler
    }
}
