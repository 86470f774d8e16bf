import ArgumentParser
import Foundation
import LazyPagesControl

/// Options every control-socket subcommand takes.
struct ControlOptions: ParsableArguments {
    @Option(name: .customLong("control-socket"), help: "The control socket of `lazy-pagesd serve`.")
    var controlSocket = ControlProtocol.defaultSocketPath

    @Flag(name: .customLong("json"), help: "Print the daemon's JSON reply (one line) instead of text.")
    var json = false

    /// Sends `request`; a refusal is printed (as text, or as the JSON reply) and ends the command with exit 1.
    /// Refusals whose code is in `accepting` are returned instead.
    func send(_ request: ControlRequest, accepting: Set<ControlReply.ErrorCode> = []) throws -> ControlReply {
        let reply: ControlReply
        do {
            reply = try ControlClient(socketPath: controlSocket).send(request)
        } catch {
            printToStandardError("lazy-pages: \(error)")
            throw ExitCode.failure
        }
        if !reply.ok, !(reply.code.map(accepting.contains) ?? false) {
            if json {
                printJSON(reply)
            } else {
                printToStandardError("lazy-pages: \(reply.error ?? "refused") (\(reply.code?.rawValue ?? "error"))")
            }
            throw ExitCode.failure
        }
        return reply
    }

    func printJSON(_ reply: ControlReply) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        if let data = try? encoder.encode(reply) { print(String(decoding: data, as: UTF8.self)) }
    }
}

func printToStandardError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// A path as the daemon needs it: absolute (the daemon's working directory is not the client's).
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
