/// CRIU 4.2's command-line grammar (`criu/config.c`, its `getopt_long` tables): every option name CRIU's parser
/// accepts, its one-letter form, and whether it takes an argument. It is the grammar CRIU's users and tools write,
/// not a list of what we implement: which of these a command gives meaning to is the command's business
/// (``CRIUCommandSpec``).
public enum CRIUOptionTable {
    /// How an option takes its argument, as `getopt_long` has it.
    public enum Argument: Sendable, Equatable {
        /// A flag: `--tcp-close`; `--tcp-close=x` is an error.
        case none
        /// `--images-dir DIR`, `--images-dir=DIR`, `-D DIR`, `-DDIR`: the next word is taken even if it starts with `-`.
        case required
        /// Only glued: `--verbosity=4`, `-v4`. `--verbosity 4` is `--verbosity` and a stray word `4`.
        case optional
    }

    public struct Option: Sendable, Equatable {
        /// The long name, without dashes (`images-dir`, `no-tcp-close`).
        public let name: String
        public let argument: Argument
        /// The one-letter form (`D` for `images-dir`), if any.
        public let short: Character?
    }

    /// A CRIU `BOOL_OPT`: `--name` and `--no-name`.
    private static func toggle(_ name: String, short: Character? = nil) -> [Option] {
        [Option(name: name, argument: .none, short: short), Option(name: "no-" + name, argument: .none, short: nil)]
    }

    private static func flag(_ name: String, _ short: Character? = nil) -> [Option] {
        [Option(name: name, argument: .none, short: short)]
    }

    private static func value(_ name: String, _ short: Character? = nil) -> [Option] {
        [Option(name: name, argument: .required, short: short)]
    }

    private static func optionalValue(_ name: String, _ short: Character? = nil) -> [Option] {
        [Option(name: name, argument: .optional, short: short)]
    }

    /// Every long option of CRIU 4.2, with its one-letter form where CRIU's short-option string has one.
    public static let options: [Option] = {
        var all: [Option] = []
        // Process tree and final state.
        all += value("tree", "t") + flag("leave-stopped", "s") + flag("leave-running", "R")
        all += toggle("restore-detached") + toggle("restore-sibling", short: "S") + toggle("daemon", short: "d")
        // Where things are.
        all += value("images-dir", "D") + value("work-dir", "W") + value("log-file", "o") + value("root", "r")
        all += value("join-ns", "J") + value("libdir", "L") + value("prev-images-dir")
        all += flag("help", "h") + flag("version", "V")
        all += optionalValue("verbosity", "v") + toggle("log-pid") + value("pidfile") + value("status-fd")
        all += value("config") + flag("no-default-config")
        // Resources: sockets, files, mounts, cgroups, namespaces.
        all += optionalValue("ext-unix-sk", "x") + toggle("tcp-established") + toggle("skip-in-flight")
        all += toggle("tcp-close") + value("close") + toggle("evasive-devices") + value("veth-pair")
        all += value("action-script") + toggle("link-remap") + toggle("shell-job", short: "j")
        all += toggle("file-locks", short: "l") + value("ext-mount-map", "M") + value("external")
        all += value("inherit-fd") + value("skip-mnt") + value("enable-fs") + flag("enable-external-sharing")
        all += flag("enable-external-masters") + value("empty-ns") + value("ghost-limit") + toggle("ghost-fiemap")
        all += value("irmap-scan-path") + toggle("force-irmap") + value("lsm-profile") + value("lsm-mount-context")
        all += optionalValue("manage-cgroups") + value("cgroup-root") + value("freeze-cgroup") + value("cgroup-props")
        all += value("cgroup-props-file") + value("cgroup-dump-controller") + value("cgroup-yard")
        all += value("file-validation") + toggle("skip-file-rwx-check") + value("network-lock")
        all += toggle("mntns-compat-mode") + toggle("unprivileged") + toggle("allow-uprobes")
        // Pages, memory, page server, lazy pages.
        all += toggle("page-server") + value("address") + value("port") + value("ps-socket") + flag("lazy-pages")
        all += toggle("track-mem") + toggle("auto-dedup") + value("pre-dump-mode") + toggle("stream") + flag("ms")
        all += toggle("tls") + value("tls-cacert") + value("tls-cacrl") + value("tls-cert") + value("tls-key")
        all += flag("tls-no-cn-verify")
        // Checks, features, CPU, behaviour switches.
        all += optionalValue("cpu-cap") + value("feature") + toggle("extra") + toggle("experimental") + flag("all")
        all += toggle("deprecated") + toggle("display-stats") + toggle("weak-sysctls") + value("timeout")
        all += flag("exec-cmd")
        return all
    }()

    /// The long options, one per name (CRIU's `long_opts`).
    public static let longOptions: [String: Option] = Dictionary(options.map { ($0.name, $0) }) { first, _ in first }

    /// The one-letter options (CRIU's `short_opts`), each with the long option it means.
    public static let shortOptions: [Character: Option] = {
        var table: [Character: Option] = [:]
        for option in options { if let short = option.short { table[short] = option } }
        return table
    }()

    /// The long option `spelling` (without dashes) names, as `getopt_long` resolves it: an exact name, or an
    /// abbreviation that is the prefix of exactly one name. Nil when no option starts so.
    public static func resolve(_ spelling: String) throws(CRIUCommandLineError) -> Option? {
        if let exact = longOptions[spelling] { return exact }
        let candidates = longOptions.keys.filter { $0.hasPrefix(spelling) }.sorted()
        guard candidates.count <= 1 else {
            throw CRIUCommandLineError(
                "option '--\(spelling)' is ambiguous; possibilities: "
                    + candidates.map { "'--\($0)'" }.joined(separator: " "))
        }
        return candidates.first.flatMap { longOptions[$0] }
    }
}
