import CRIUCommandLine
import Foundation
import TestSupport
import Testing

/// CRIU's configuration files: the format of `criu/config.c` and the order of the sources (default files, then
/// `$CRIU_CONFIG_FILE`, then `--config FILE`, then the command line, each overriding the one before). The default
/// file locations come from `LP_CRIU_DEFAULT_CONFIG_FILES` here, so no test writes /etc or $HOME.
@Suite struct ConfigFileTests {
    typealias Statement = CRIUConfigFile.Statement

    @Test func format() throws {
        let text = """
            # a comment line
              \t# an indented comment

            tcp-close
            images-dir /srv/images
               log-file "lazy pages.log"   # trailing comment
            lsm-profile "a \\"quoted\\" word"
            verbosity=4
            pidfile p#glued comment
            address ""
            work-dir\t/w
            """
        let file = try CRIUConfigFile(path: "c.conf", text: text)
        #expect(file.statements == [
            Statement(name: "tcp-close", value: nil, line: 4),
            Statement(name: "images-dir", value: "/srv/images", line: 5),
            Statement(name: "log-file", value: "lazy pages.log", line: 6),
            Statement(name: "lsm-profile", value: "a \"quoted\" word", line: 7),
            Statement(name: "verbosity=4", value: nil, line: 8),
            Statement(name: "pidfile", value: "p", line: 9),
            Statement(name: "address", value: "", line: 10),
            Statement(name: "work-dir", value: "/w", line: 11),
        ])
    }

    static let malformed: [(text: String, message: String)] = [
        ("images-dir /a /b", "c.conf:1: 'images-dir' has more than one value"),
        ("\nlog-file \"open", "c.conf:2: the value of 'log-file' has no closing quote"),
        ("log-file \"a\"b", "c.conf:1: 'log-file' has more than one value"),
    ]

    @Test(arguments: malformed) func malformedLinesNameFileAndLine(_ test: (text: String, message: String)) {
        #expect {
            _ = try CRIUConfigFile(path: "c.conf", text: test.text)
        } throws: { error in
            (error as? CRIUCommandLineError)?.message.hasPrefix(test.message) == true
        }
    }

    /// A scratch directory with the files of one test.
    struct Files {
        let directory: String
        init() throws {
            directory = try TestScratch.makeDirectory("criu-config")
        }
        func write(_ name: String, _ text: String) throws -> String {
            let path = directory + "/" + name
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Parses the rewritten words with the shared option group, as the commands do.
    static func options(
        _ words: [String], environment: [String: String], spec: CRIUCommandSpec = .lazyPages
    ) throws -> (CRIUDaemonOptions, CRIUCommandLine) {
        let commandLine = try CRIUCommandLine(words, for: spec, environment: environment)
        let own = commandLine.arguments.dropFirst().filter { !$0.hasPrefix("--page-server") && !$0.hasPrefix("--no-page-server") }
        return (try CRIUDaemonOptions.parse(Array(own)), commandLine)
    }

    @Test func defaultFilesThenEnvironmentThenConfigThenCommandLine() throws {
        let files = try Files()
        defer { files.remove() }
        let global = try files.write("global.conf", "images-dir /global\nwork-dir /global-work\nlog-file g.log\npidfile g.pid\n")
        let user = try files.write("user.conf", "work-dir /user-work\nlog-file u.log\npidfile u.pid\n")
        let fromEnvironment = try files.write("env.conf", "log-file e.log\npidfile e.pid\n")
        let explicit = try files.write("explicit.conf", "pidfile x.pid\n")
        let defaults = [CRIUCommandLine.defaultFilesVariable: "\(global):\(user)"]

        var (options, commandLine) = try Self.options([], environment: defaults)
        #expect(commandLine.configFiles == [global, user])
        #expect(options.imagesDirectory == "/global")
        #expect(options.workDirectory == "/user-work")
        #expect(options.logFile == "u.log")

        (options, commandLine) = try Self.options([], environment: defaults.merging(["CRIU_CONFIG_FILE": fromEnvironment]) { $1 })
        #expect(options.logFile == "e.log")
        #expect(options.pidFile == "e.pid")

        // --config skips the default files, not $CRIU_CONFIG_FILE; the command line beats every file.
        (options, commandLine) = try Self.options(
            ["--config", explicit, "-o", "cmd.log"],
            environment: defaults.merging(["CRIU_CONFIG_FILE": fromEnvironment]) { $1 })
        #expect(commandLine.configFiles == [fromEnvironment, explicit])
        #expect(options.imagesDirectory == ".")
        #expect(options.pidFile == "x.pid")
        #expect(options.logFile == "cmd.log")

        (options, commandLine) = try Self.options(["--config=\(explicit)"], environment: defaults)
        #expect(commandLine.configFiles == [explicit])
    }

    @Test func noDefaultConfigIgnoresTheDefaultFiles() throws {
        let files = try Files()
        defer { files.remove() }
        let global = try files.write("default.conf", "images-dir /from-default\nverbosity=4\n")
        let defaults = [CRIUCommandLine.defaultFilesVariable: global]

        let (withDefaults, _) = try Self.options(["-D", "/cmd"], environment: defaults)
        #expect(withDefaults.imagesDirectory == "/cmd")
        #expect(withDefaults.verbosity == 4)

        let (without, commandLine) = try Self.options(["--no-default-config"], environment: defaults)
        #expect(commandLine.configFiles.isEmpty)
        #expect(without.imagesDirectory == ".")
        #expect(without.verbosity == 2)
    }

    /// Verbosity adds up across the sources as in CRIU; `verbosity 4` in a file is read by CRIU as `verbosity` (one
    /// more level, the 4 ignored: measured with criu 4.2), which we follow and warn about.
    @Test func verbosityAcrossSources() throws {
        let files = try Files()
        defer { files.remove() }
        let plus = try files.write("plus.conf", "verbosity\n")
        let spaced = try files.write("spaced.conf", "verbosity 4\n")
        let set = try files.write("set.conf", "verbosity=0\n")

        #expect(try Self.options(["-v"], environment: [CRIUCommandLine.defaultFilesVariable: plus]).0.verbosity == 4)
        let (options, _) = try Self.options([], environment: [CRIUCommandLine.defaultFilesVariable: spaced])
        #expect(options.verbosity == 3)
        #expect(options.warningNotes.count == 1)
        #expect(options.warningNotes.first?.contains("write 'verbosity=4'") == true, "\(options.warningNotes)")
        #expect(try Self.options(["-v4", "--config", set], environment: [:]).0.verbosity == 4, "the command line comes last")
    }

    @Test func ourOwnOptionsAndIgnoredOnesInAFile() throws {
        let files = try Files()
        defer { files.remove() }
        let config = try files.write("c.conf", "fault-around 4\nno-guardian\ntcp-close\nconfig /elsewhere\n")
        let commandLine = try CRIUCommandLine(["--config", config], for: .lazyPages, environment: [:])
        #expect(commandLine.arguments.contains("--fault-around=4"))
        #expect(commandLine.arguments.contains("--no-guardian"))
        #expect(commandLine.arguments.contains { $0.hasPrefix("--criu-ignored=tcp-close (\(config):3)") })
        #expect(commandLine.arguments.contains { $0.hasPrefix("--criu-ignored=--config in a configuration file") })
    }

    @Test func missingOrBadExplicitFilesAreErrorsNamingTheFile() throws {
        let files = try Files()
        defer { files.remove() }
        #expect {
            _ = try CRIUCommandLine(["--config", files.directory + "/absent.conf"], for: .lazyPages, environment: [:])
        } throws: { error in
            (error as? CRIUCommandLineError)?.message
                == "cannot read the configuration file \(files.directory)/absent.conf: No such file or directory"
        }
        let bad = try files.write("bad.conf", "images-dir\n")
        #expect {
            _ = try CRIUCommandLine([], for: .lazyPages, environment: ["CRIU_CONFIG_FILE": bad])
        } throws: { error in
            (error as? CRIUCommandLineError)?.message == "\(bad):1: option 'images-dir' requires an argument"
        }
        // An absent default file is normal.
        let commandLine = try CRIUCommandLine(
            [], for: .lazyPages, environment: [CRIUCommandLine.defaultFilesVariable: files.directory + "/none.conf"])
        #expect(commandLine.configFiles.isEmpty)
    }

    @Test func criuDefaultLocations() {
        #expect(CRIUCommandLine.defaultConfigFiles(environment: ["HOME": "/home/u"])
            == ["/etc/criu/default.conf", "/home/u/.criu/default.conf"])
        #expect(CRIUCommandLine.defaultConfigFiles(environment: [:]) == ["/etc/criu/default.conf"])
    }
}
