import CRIUCommandLine
import Foundation
import Testing

/// Every way CRIU 4.2's `getopt_long` lets a user or tool spell an option (checked against the real `criu` where the
/// rule is surprising: `-v 4` and `--verbosity 4` are refused by CRIU as "excessive parameter", `--verb=4` works),
/// rewritten to the one spelling our argument parser knows.
@Suite struct SpellingTests {
    /// No configuration files at all: only the command line counts.
    static let bare = [CRIUCommandLine.defaultFilesVariable: ""]

    static func rewrite(_ words: [String], _ spec: CRIUCommandSpec = .lazyPages) throws -> [String] {
        Array(try CRIUCommandLine(words, for: spec, environment: bare).arguments.dropFirst())
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var words: [String]
        var expected: [String]
        var testDescription: String { words.joined(separator: " ") }
    }

    static let cases: [Case] = [
        // Required arguments: separate, glued, with `=`, abbreviated.
        Case(words: ["-D", "/img"], expected: ["--images-dir=/img"]),
        Case(words: ["-D/img"], expected: ["--images-dir=/img"]),
        Case(words: ["--images-dir", "/img"], expected: ["--images-dir=/img"]),
        Case(words: ["--images-dir=/img"], expected: ["--images-dir=/img"]),
        Case(words: ["--images", "/img"], expected: ["--images-dir=/img"]),
        Case(words: ["--im=/img"], expected: ["--images-dir=/img"]),
        Case(words: ["-D", "-weird"], expected: ["--images-dir=-weird"]),
        Case(words: ["-W", "/w", "-o", "log", "-olog2"], expected: ["--work-dir=/w", "--log-file=log", "--log-file=log2"]),
        Case(words: ["--log-file=l", "--log-f", "m"], expected: ["--log-file=l", "--log-file=m"]),
        Case(words: ["--status-fd", "4", "--status-fd=5"], expected: ["--status-fd=4", "--status-fd=5"]),
        Case(words: ["--pidfile", "p", "--pidfile=q"], expected: ["--pidfile=p", "--pidfile=q"]),
        Case(words: ["--page-server", "--port", "12345", "--address", "127.0.0.1"],
             expected: ["--page-server", "--port=12345", "--address=127.0.0.1"]),
        Case(words: ["--no-page-server", "--port=1", "--addr=::1"], expected: ["--no-page-server", "--port=1", "--address=::1"]),
        // Verbosity: CRIU starts at 2; -v adds one, -vN sets, -vvv... adds the count.
        Case(words: ["-v"], expected: ["--verbosity=3"]),
        Case(words: ["-v", "-v"], expected: ["--verbosity=4"]),
        Case(words: ["-vv"], expected: ["--verbosity=4"]),
        Case(words: ["-vvvv"], expected: ["--verbosity=6"]),
        Case(words: ["-v4"], expected: ["--verbosity=4"]),
        Case(words: ["-v0"], expected: ["--verbosity=0"]),
        Case(words: ["--verbosity"], expected: ["--verbosity=3"]),
        Case(words: ["--verbosity=4"], expected: ["--verbosity=4"]),
        Case(words: ["--verb=1"], expected: ["--verbosity=1"]),
        Case(words: ["-v4", "-v"], expected: ["--verbosity=5"]),
        Case(words: ["--verbosity=4", "-vv"], expected: ["--verbosity=6"]),
        // getopt's one-letter groups: flags first, the one with an argument last (which takes the rest).
        Case(words: ["-dD", "/img"], expected: ["--daemon", "--images-dir=/img"]),
        Case(words: ["-dD/img"], expected: ["--daemon", "--images-dir=/img"]),
        Case(words: ["-dv4"], expected: ["--verbosity=4", "--daemon"]),
        Case(words: ["-jdv"], expected: ["--verbosity=3", "--criu-ignored=-j: no meaning for lazy-pages, ignored", "--daemon"]),
        // -d, --daemon and --restore-detached are one switch in CRIU.
        Case(words: ["-d"], expected: ["--daemon"]),
        Case(words: ["--daemon"], expected: ["--daemon"]),
        Case(words: ["--restore-detached"], expected: ["--daemon"]),
        Case(words: ["--daemon", "--no-restore-detached"], expected: ["--daemon", "--no-daemon"]),
        Case(words: ["--no-daemon"], expected: ["--no-daemon"]),
        // The action word anywhere, as CRIU permutes.
        Case(words: ["lazy-pages", "-D", "/img"], expected: ["--images-dir=/img"]),
        Case(words: ["-D", "/img", "lazy-pages"], expected: ["--images-dir=/img"]),
        // Configuration-file switches choose files; they are not passed on.
        Case(words: ["--no-default-config"], expected: []),
        // Our own options pass through untouched, values and all.
        Case(words: ["--fault-around", "4", "--no-guardian", "-D", "x"],
             expected: ["--fault-around", "4", "--no-guardian", "--images-dir=x"]),
        Case(words: ["--retries", "-1"], expected: ["--retries", "-1"]),
        // Version.
        Case(words: ["-V"], expected: ["--version"]),
        Case(words: ["--version"], expected: ["--version"]),
        // zdtm's exact command line (remote mode).
        Case(words: ["lazy-pages", "--no-default-config", "--log-file", "lazy-pages.log", "--images-dir", "/d",
                     "--verbosity=4", "--status-fd", "4", "--page-server", "--port", "12345", "--address", "127.0.0.1"],
             expected: ["--verbosity=4", "--log-file=lazy-pages.log", "--images-dir=/d", "--status-fd=4",
                        "--page-server", "--port=12345", "--address=127.0.0.1"]),
    ]

    @Test(arguments: cases) func spelling(_ test: Case) throws {
        #expect(try Self.rewrite(test.words) == test.expected)
    }

    /// CRIU options that mean nothing to the daemon are accepted and become notes, logged at debug level.
    static let ignored: [[String]] = [
        ["--tcp-close"], ["--no-tcp-close"], ["--shell-job"], ["-j"], ["--root", "/r"], ["-r/r"], ["--manage-cgroups"],
        ["--manage-cgroups=full"], ["--cpu-cap=all"], ["-x"], ["-x123"], ["--ext-unix-sk=1"], ["--lazy-pages"],
        ["--timeout", "10"], ["--tree", "5"], ["-t5"], ["--action-script", "/bin/true"], ["--unprivileged"],
        ["--libdir", "/l"], ["-L/l"], ["--log-pid"], ["-s"], ["-R"], ["-S"], ["-l"], ["-J", "net:/x"], ["-M", "auto"],
        ["--external", "mnt[x]:y"], ["--feature", "mem_dirty_track"], ["--network-lock", "skip"], ["--tcp-est"],
    ]

    @Test(arguments: ignored) func ignoredOptionsBecomeNotes(_ words: [String]) throws {
        let rewritten = try Self.rewrite(words)
        #expect(rewritten.count == 1, "\(rewritten)")
        #expect(rewritten.first?.hasPrefix("--criu-ignored=") == true, "\(rewritten)")
        #expect(rewritten.first?.contains(words[0]) == true, "the note names the option as written: \(rewritten)")
    }

    /// What CRIU itself rejects, or what the daemon cannot honour, is an error naming the option.
    static let refused: [(words: [String], message: String)] = [
        (["--stream"], "--stream: --stream cannot be used with the lazy-pages command (nor with criu lazy-pages)"),
        (["--ms"], "--ms is deprecated"),
        (["--log", "x"], "option '--log' is ambiguous; possibilities: '--log-file' '--log-pid'"),
        (["--tcp-close=1"], "option '--tcp-close' doesn't allow an argument"),
        (["--images-dir"], "option '--images-dir' requires an argument"),
        (["-D"], "option requires an argument -- 'D'"),
        (["-dZ"], "invalid option -- 'Z'"),
        (["--no-"], "is ambiguous"),
    ]

    @Test(arguments: refused) func refusedSpellings(_ test: (words: [String], message: String)) throws {
        #expect {
            _ = try Self.rewrite(test.words)
        } throws: { error in
            (error as? CRIUCommandLineError)?.message.contains(test.message) == true
        }
    }

    @Test func helpWinsOverEverything() throws {
        #expect(try Self.rewrite(["--tcp-close=1", "-h"]) == ["--help"])
        #expect(try Self.rewrite(["-D", "x", "--help"]) == ["--help"])
    }

    @Test func pageServerSpellings() throws {
        // zdtm's `criu page-server` line for --remote-lazy-pages.
        let words = ["--no-default-config", "--log-file", "page-server.log", "--images-dir", "/d", "--verbosity=4",
                     "--pidfile", "ps.pid", "--port", "12345", "--lazy-pages", "--status-fd", "7"]
        #expect(try Self.rewrite(words, .pageServer) == [
            "--verbosity=4", "--log-file=page-server.log", "--images-dir=/d", "--pidfile=ps.pid", "--port=12345",
            "--lazy-pages", "--status-fd=7",
        ])
        #expect(try Self.rewrite(["page-server", "-d", "--address=0.0.0.0"], .pageServer) == ["--daemon", "--address=0.0.0.0"])
        // --page-server means nothing to a page server.
        #expect(try Self.rewrite(["--page-server"], .pageServer).first?.hasPrefix("--criu-ignored=") == true)
    }

    /// The rewritten words parse with the shared option group, the last of a repeated option winning (as CRIU's
    /// later sources override earlier ones).
    @Test func rewrittenWordsParse() throws {
        let words = try Self.rewrite(["-D", "/a", "-d", "--images-dir=/b", "-vvv", "--no-daemon", "-o", "x",
                                      "--pidfile", "p", "--tcp-close"], .pageServer)
        let options = try CRIUDaemonOptions.parse(words)
        #expect(options.imagesDirectory == "/b")
        #expect(options.verbosity == 5)
        #expect(options.daemon == false)
        #expect(options.logFile == "x")
        #expect(options.logPath == "/b/x")
        #expect(options.pidPath == "/b/p")
        #expect(options.ignoredNotes == ["--tcp-close: no meaning for page-server, ignored"])
    }
}
