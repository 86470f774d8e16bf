// swift-tools-version: 6.1
import Foundation
import PackageDescription

let package = Package(
    name: "lazy-pages",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "lazy-pagesd", targets: ["lazy-pagesd"]),
        .executable(name: "lazy-pages", targets: ["lazy-pages"]),
        .library(name: "Userfaultfd", targets: ["Userfaultfd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // The C layer: module map + one header of static inline shims and constants. No logic.
        .systemLibrary(name: "CUserfaultfd"),
        // What Swift cannot import from Linux (epoll/eventfd/timerfd, pidfd, setfsuid, the CMSG_* macros): one header
        // of prefixed one-line shims, for LinuxSupport only.
        .systemLibrary(name: "CLinuxSupport"),
        // The platform layer under everything else: listeners, descriptor passing, mapped files, descriptor limits,
        // epoll and wake-up events, peer credentials, descriptor types, wait statuses, one SystemCallError and the
        // one EINTR loop.
        .target(
            name: "LinuxSupport",
            dependencies: [
                "CLinuxSupport", .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The typed Swift API over a uffd.
        .target(
            name: "Userfaultfd",
            dependencies: ["CUserfaultfd", "LinuxSupport", .product(name: "SystemPackage", package: "swift-system")]),
        // CRIU image files: reading (validated) and writing.
        .target(
            name: "CRIUImages",
            dependencies: ["LinuxSupport", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Protos"]),
        // The engine: address-space tracking, page sources, the per-restore event loop, background fill.
        .target(
            name: "LazyPagesEngine",
            dependencies: [
                "Userfaultfd", "LinuxSupport", "CGuardian",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The restore guardian: a clone(CLONE_FILES) child of the daemon that kills the restore's processes if the
        // daemon dies (C: raw system calls only, it runs without exec in a copy of a multithreaded process).
        .target(name: "CGuardian"),
        // Front end: CRIU's lazy-pages socket protocol and the daemon's run logic.
        .target(
            name: "LazyPagesCRIU",
            dependencies: [
                "LazyPagesEngine", "CRIUImages", "Userfaultfd", "LinuxSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Front end: Firecracker's UFFD memory backend (JSON mappings + uffd handshake, snapshot memory file).
        .target(
            name: "LazyPagesFirecracker",
            dependencies: [
                "LazyPagesEngine", "Userfaultfd", "LinuxSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // systemd's protocols, service side: sd_notify over NOTIFY_SOCKET and socket activation (LISTEN_FDS).
        .target(name: "SystemdSupport", dependencies: ["LinuxSupport"]),
        // A minimal socket-activated Type=notify service the SystemdSupport tests start the way systemd does.
        .executableTarget(name: "sd-activation-testee", dependencies: ["SystemdSupport"]),
        // CRIU's page-server protocol: wire format, the server (serves an image directory) and the client (a remote
        // page source for the engine).
        .target(
            name: "PageServer",
            dependencies: [
                "CRIUImages", "LazyPagesEngine", "LinuxSupport", "CGnuTLS", .product(name: "Logging", package: "swift-log"),
            ]),
        // GnuTLS (Debian: libgnutls28-dev) for the page-server protocol's TLS, as CRIU uses it: module map and
        // one-line shims only.
        .systemLibrary(name: "CGnuTLS", pkgConfig: "gnutls", providers: [.apt(["libgnutls28-dev"])]),
        // The page-server options both executables share (`--tls*`), as ArgumentParser option groups.
        .target(
            name: "PageServerCommandLine",
            dependencies: [
                "PageServer", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The control protocol of `lazy-pagesd serve` (versioned line-delimited JSON) and its client.
        .target(name: "LazyPagesControl", dependencies: ["LinuxSupport"]),
        // `lazy-pagesd serve`: jobs (one session and thread each), the control socket, graceful shutdown (a
        // swift-service-lifecycle `Service`), metrics.
        .target(
            name: "LazyPagesService",
            dependencies: [
                "LazyPagesControl", "LazyPagesCRIU", "LazyPagesFirecracker", "LazyPagesEngine", "PageServer", "LinuxSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        // Plays `criu restore --lazy-pages`: workload processes that register their memory and hand over uffds.
        .target(
            name: "RestoreSimulator",
            dependencies: ["CRIUImages", "LinuxSupport"]),
        // SCM_RIGHTS for the C helper programs below.
        .target(name: "CDescriptorPassing"),
        // The workload process the simulator starts (C: it must fault, fork, mremap and madvise for real).
        .executableTarget(name: "lp-workload", dependencies: ["CDescriptorPassing"], path: "Sources/lp-workload"),
        // Does what Firecracker does with a UFFD memory backend, then acts as the guest and checks every byte (C).
        .executableTarget(
            name: "fc-emulator", dependencies: ["CDescriptorPassing"], path: "Sources/fc-emulator",
            linkerSettings: [.linkedLibrary("pthread")]),
        // Holds connections to a unix socket as whatever user runs it (the security tests' other users) (C).
        .executableTarget(name: "lp-socket-client", path: "Sources/lp-socket-client"),
        // Small C helper the Userfaultfd tests drive as a separate process (forks, remaps, exits).
        .executableTarget(name: "uffd-testee", dependencies: ["CDescriptorPassing"], path: "Sources/uffd-testee"),
        // A real process for `criu dump` / `criu restore --lazy-pages`: patterned memory, forks, zombies, threads,
        // a process tree; after the restore it checks every byte and reports through a fifo (C).
        .executableTarget(
            name: "lp-criu-workload", path: "Sources/lp-criu-workload",
            linkerSettings: [.linkedLibrary("pthread")]),
        // Interposes malloc & co. to count one thread's allocations (C), for lp-fault-allocations only: linked into
        // any other executable it would count nothing but still replace that executable's allocator entry points.
        .target(name: "CAllocationCounter"),
        // Counts the allocations of the engine's thread serving faults in steady state (FaultAllocationTests).
        .executableTarget(
            name: "lp-fault-allocations",
            dependencies: [
                "CAllocationCounter", "LazyPagesEngine", "Userfaultfd", "LinuxSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Benchmark reference points (C): the UFFDIO_COPY fill ceiling and the minimal-handler fault floor.
        .executableTarget(
            name: "lp-bench-baseline", dependencies: ["CDescriptorPassing"], path: "Sources/lp-bench-baseline"),
        // The restored task the benchmark times faults in (speaks lp-workload's plan/fd-3 protocol).
        .executableTarget(
            name: "lp-bench-workload", dependencies: ["CDescriptorPassing"], path: "Sources/lp-bench-workload"),
        // `lazy-pages bench`: images, daemons, baselines and workloads run side by side; report and ratios.
        .target(
            name: "LazyPagesBench",
            dependencies: ["CRIUImages", "RestoreSimulator", "LinuxSupport"]),
        // CRIU's command line for our drop-ins: CRIU's option grammar and configuration files rewritten for
        // swift-argument-parser, the options CRIU's daemons share, and their conventions (-d, --status-fd, the log).
        .target(
            name: "CRIUCommandLine",
            dependencies: [
                "LinuxSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "lazy-pagesd",
            dependencies: [
                "LazyPagesCRIU", "LazyPagesEngine", "PageServer", "LazyPagesFirecracker", "SystemdSupport",
                "LazyPagesService", "LazyPagesControl", "CRIUCommandLine", "PageServerCommandLine", "LinuxSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        // `lazy-pages` runs the C helper programs it finds beside itself (demo and restore-sim start lp-workload;
        // bench its baselines and workload): depending on them makes `swift run lazy-pages demo` build them too.
        .executableTarget(
            name: "lazy-pages",
            dependencies: [
                "Userfaultfd", "CRIUImages", "RestoreSimulator", "LazyPagesCRIU", "LazyPagesEngine", "LazyPagesBench",
                "PageServer", "LazyPagesControl", "CRIUCommandLine", "PageServerCommandLine", "LinuxSupport",
                "lp-workload", "lp-bench-baseline", "lp-bench-workload",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Helpers shared by the test targets: finding built executables, running them, child processes, loggers, the
        // heavy-test gate.
        .target(
            name: "TestSupport",
            dependencies: [
                "RestoreSimulator", "LazyPagesEngine", "Userfaultfd", "LinuxSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/TestSupport"),
        .testTarget(name: "UserfaultfdTests", dependencies: ["Userfaultfd", "LinuxSupport", "TestSupport"]),
        .testTarget(name: "CRIUImagesTests", dependencies: ["CRIUImages", "LinuxSupport", "TestSupport"]),
        .testTarget(name: "CRIUCommandLineTests", dependencies: ["CRIUCommandLine", "TestSupport"]),
        .testTarget(
            name: "ServiceTests",
            dependencies: [
                "LazyPagesControl", "LazyPagesService", "LazyPagesEngine", "LazyPagesCRIU", "LazyPagesFirecracker",
                "CRIUImages", "RestoreSimulator", "LinuxSupport", "TestSupport",
            ]),
        .testTarget(name: "SystemdTests", dependencies: ["SystemdSupport", "LinuxSupport", "TestSupport"]),
        // Real `criu dump` / `criu restore --lazy-pages` of lp-criu-workload against lazy-pagesd, CRIU's page server,
        // our page server and CRIU's own daemon.
        .testTarget(name: "CRIUEndToEndTests", dependencies: ["CRIUImages", "LinuxSupport", "TestSupport"]),
        .testTarget(
            name: "FirecrackerTests",
            dependencies: [
                "LazyPagesFirecracker", "LazyPagesEngine", "LazyPagesCRIU", "LinuxSupport", "Userfaultfd", "CUserfaultfd",
                "TestSupport",
            ]),
        .testTarget(
            name: "PageServerTests",
            dependencies: [
                "PageServer", "LazyPagesEngine", "LazyPagesCRIU", "LinuxSupport", "RestoreSimulator", "CRIUImages",
                "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Engine units (address spaces, the copy policy, models, the journal), the engine in process over real faults,
        // the fault path's allocation count.
        .testTarget(
            name: "EngineTests",
            dependencies: [
                "LazyPagesEngine", "Userfaultfd", "LinuxSupport", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The CRIU front end: restores through CRIU's lazy-pages socket against the emulator, hand-over, the guardian,
        // zombies, memory cgroups, many tasks, the image fuzzer.
        .testTarget(
            name: "CRIUFrontEndTests",
            dependencies: [
                "LazyPagesCRIU", "LazyPagesEngine", "RestoreSimulator", "CRIUImages", "Userfaultfd", "LinuxSupport",
                "TestSupport",
            ]),
        // The executables' command lines (lazy-pagesd, lazy-pages demo, the zdtm drop-in, bench) and the import graph.
        .testTarget(name: "CLITests", dependencies: ["RestoreSimulator", "CRIUImages", "LinuxSupport", "TestSupport"]),
        // The platform module: errno policy, mapped files.
        .testTarget(name: "LinuxSupportTests", dependencies: ["LinuxSupport", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

// A libFuzzer target over the image parser, only for `Scripts/fuzz-images` (which sets LP_LIBFUZZER and builds with
// `-sanitize=fuzzer` in its own build directory): the default build and `swift test` never see it.
if ProcessInfo.processInfo.environment["LP_LIBFUZZER"] != nil {
    package.targets.append(.executableTarget(
        name: "lp-image-fuzz", dependencies: ["CRIUImages", "LinuxSupport"], swiftSettings: [.define("LP_LIBFUZZER")]))
}
