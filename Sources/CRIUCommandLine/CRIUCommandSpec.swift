/// What one of our commands makes of CRIU's options: the CRIU options it defines itself (each mapped to the spelling
/// its argument parser knows), the ones it refuses because it cannot honour them, and — implicitly — the rest, which
/// it accepts and ignores (logged at debug level). `--verbosity`/`-v`, `--config`, `--no-default-config`, `--help`
/// and `--version` are handled the same way for every command, by ``CRIUCommandLine``.
public struct CRIUCommandSpec: Sendable {
    /// The action word: `lazy-pages` (as in `criu lazy-pages`), `page-server`.
    public var action: String
    /// CRIU long name → the command's own option (without dashes). A `--no-x` form needs its own entry.
    public var meanings: [String: String]
    /// CRIU long name → why the command cannot honour it.
    public var refused: [String: String]

    public init(action: String, meanings: [String: String], refused: [String: String] = [:]) {
        self.action = action
        self.meanings = meanings
        self.refused = refused
    }

    /// Options whose meaning is the same in every CRIU daemon we replace: where the images, the work directory and
    /// the log are; the pidfile, the status descriptor, `-d`, and TLS for the page-server connection.
    public static let daemonMeanings: [String: String] = [
        "images-dir": "images-dir", "work-dir": "work-dir", "log-file": "log-file",
        "pidfile": "pidfile", "status-fd": "status-fd",
        // CRIU keeps --daemon and --restore-detached in one variable (a union): both detach `criu lazy-pages`.
        "daemon": "daemon", "no-daemon": "no-daemon", "restore-detached": "daemon", "no-restore-detached": "no-daemon",
        "address": "address", "port": "port",
        "tls": "tls", "no-tls": "no-tls", "tls-cacert": "tls-cacert", "tls-cacrl": "tls-cacrl",
        "tls-cert": "tls-cert", "tls-key": "tls-key", "tls-no-cn-verify": "tls-no-cn-verify",
    ]

    /// What CRIU itself refuses for a daemon, or what only `criu restore`/`criu dump` can do, for the command
    /// `action`. (`--ps-socket`, a connected socket CRIU's RPC service passes, is taken by both: instead of
    /// connecting, and instead of listening.)
    public static func daemonRefusals(action: String) -> [String: String] {
        [
            // CRIU 4.2 refuses it too: image streaming (criu-image-streamer) is for dump, pre-dump and restore only.
            "stream": "--stream cannot be used with the \(action) command (nor with criu \(action)): image streaming"
                + " is for dump, pre-dump and restore only",
            "ms": "--ms is deprecated; see \"Check options\" of criu --help",
            "inherit-fd": "--inherit-fd is a criu restore option",
            "exec-cmd": "--exec-cmd is available for the restore command only",
        ]
    }

    /// `lazy-pagesd` / `lazy-pagesd lazy-pages`, the drop-in for `criu lazy-pages`.
    public static let lazyPages = CRIUCommandSpec(
        action: "lazy-pages",
        meanings: daemonMeanings.merging(["page-server": "page-server", "no-page-server": "no-page-server",
                                          "ps-socket": "ps-socket"]) { $1 },
        refused: daemonRefusals(action: "lazy-pages"))

    /// `lazy-pages page-server`, the drop-in for `criu page-server --lazy-pages` (it serves lazy pages only;
    /// `--lazy-pages` gives CRIU's one-session behaviour).
    public static let pageServer = CRIUCommandSpec(
        action: "page-server", meanings: daemonMeanings.merging(["lazy-pages": "lazy-pages", "ps-socket": "ps-socket"]) { $1 },
        refused: daemonRefusals(action: "page-server"))
}
