import CRIUCommandLine
import Foundation
import TestSupport
import Testing

/// The two commands' argument-parser definitions against CRIU's table (read from the built binaries'
/// `--experimental-dump-help`): a CRIU option a command defines must be one its spec gives meaning to, and none of
/// its own options may be a CRIU option's abbreviation (the rewriter would take it for that option).
@Suite struct CommandDefinitionTests {
    static func longNames(_ argv: [String]) throws -> Set<String> {
        let output = try Spawn.run(argv + ["--experimental-dump-help"])
        try #require(output.exitCode == 0, "\(output.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any])
        let command = try #require(json["command"] as? [String: Any])
        let arguments = command["arguments"] as? [[String: Any]] ?? []
        var names: Set<String> = []
        for argument in arguments {
            for name in argument["names"] as? [[String: Any]] ?? [] where name["kind"] as? String == "long" {
                if let text = name["name"] as? String { names.insert(text) }
            }
        }
        return names
    }

    static let commands: [(argv: [String], spec: CRIUCommandSpec)] = [
        (["lazy-pagesd", "lazy-pages"], .lazyPages),
        (["lazy-pages", "page-server"], .pageServer),
    ]

    @Test(arguments: commands) func definitionsAgreeWithCRIUsTable(_ command: (argv: [String], spec: CRIUCommandSpec)) throws {
        let names = try Self.longNames([try BuiltProducts.path(of: command.argv[0])] + command.argv.dropFirst())
        let handledByTheRewriter: Set<String> = ["verbosity", "help", "version"]
        for name in names.sorted() {
            if CRIUOptionTable.longOptions[name] != nil {
                #expect(handledByTheRewriter.contains(name) || Set(command.spec.meanings.values).contains(name),
                        "\(command.argv.joined(separator: " ")) defines --\(name), which its spec ignores")
            } else {
                #expect(throws: Never.self, "--\(name) is a prefix of several CRIU options") {
                    _ = try CRIUOptionTable.resolve(name)
                }
                #expect((try? CRIUOptionTable.resolve(name)) == nil,
                        "--\(name) would be read as CRIU's --\((try? CRIUOptionTable.resolve(name))??.name ?? "")")
            }
        }
        // Every meaning the spec gives must be an option the command defines.
        for meaning in Set(command.spec.meanings.values) {
            #expect(names.contains(meaning), "the spec maps to --\(meaning), which the command does not define")
        }
    }
}
