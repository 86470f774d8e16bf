import ArgumentParser
import LazyPagesControl

/// `lazy-pages add criu -D IMAGES -W WORKDIR`: a `criu restore --lazy-pages` job.
struct AddCRIUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "criu",
        abstract: "Serve one `criu restore --lazy-pages` (lazy-pages.socket in the work directory).")

    @OptionGroup var control: ControlOptions
    @OptionGroup var job: JobOptions

    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Directory of the CRIU images.")
    var imagesDirectory: String

    @Option(name: [.customShort("W"), .customLong("work-dir")], help: "Where lazy-pages.socket is created (default: -D).")
    var workDirectory: String?

    @Option(name: .customLong("page-server"), help: "Fetch LAZY pages from this page server (HOST:PORT).")
    var pageServer: String?

    func validate() throws { if let pageServer { _ = try Self.parse(pageServer) } }

    static func parse(_ text: String) throws -> JobSpec.PageServerAddress {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw ValidationError("--page-server takes HOST:PORT, got \"\(text)\"")
        }
        return JobSpec.PageServerAddress(
            address: String(text[..<colon]).trimmingCharacters(in: ["[", "]"]), port: port)
    }

    func run() throws {
        let spec = JobSpec.criu(.init(
            imagesDirectory: absolutePath(imagesDirectory), workDirectory: workDirectory.map(absolutePath),
            pageServer: try pageServer.map(Self.parse), options: job.specOptions))
        let reply = try control.send(ControlRequest(op: .add, job: spec))
        if control.json { control.printJSON(reply) } else { print(reply.job?.id ?? "?") }
    }
}
