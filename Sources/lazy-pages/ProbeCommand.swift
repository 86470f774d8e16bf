import ArgumentParser
import Foundation

/// `lazy-pages probe`: what userfaultfd offers on this kernel, for this user.
struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report the userfaultfd features, ioctls and privileges available here.",
        discussion: """
            Exits non-zero, with one line on stderr, when no uffd able to trap faults raised inside the kernel \
            can be made (post-copy needs that).
            """)

    @Flag(help: "Print JSON (sorted keys) for scripts instead of text.")
    var json = false

    func run() throws {
        let report = ProbeReport.gather()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            let data = try encoder.encode(report)
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(report.text, terminator: "")
        }
        if let problem = report.problem {
            FileHandle.standardError.write(Data("lazy-pages probe: \(problem)\n".utf8))
            throw ExitCode.failure
        }
    }
}
