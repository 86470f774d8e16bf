// swift-tools-version: 6.1
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
    ],
    targets: [
        // The C layer: module map + one header of static inline shims and constants. No logic.
        .systemLibrary(name: "CUserfaultfd"),
        // The typed Swift API over a uffd.
        .target(
            name: "Userfaultfd",
            dependencies: ["CUserfaultfd", .product(name: "SystemPackage", package: "swift-system")]),
        // CRIU image files: reading (validated) and writing.
        .target(
            name: "CRIUImages",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Protos"]),
        // The engine: address-space tracking, page sources, the per-restore event loop, background fill.
        .target(
            name: "LazyPagesEngine",
            dependencies: [
                "Userfaultfd", "CUserfaultfd",
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
                "LazyPagesEngine", "CRIUImages", "Userfaultfd", "CGuardian",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Plays `criu restore --lazy-pages`: workload processes that register their memory and hand over uffds.
        .target(
            name: "RestoreSimulator",
            dependencies: ["CRIUImages", "LazyPagesCRIU"]),
        // The workload process the simulator starts (C: it must fault, fork, mremap and madvise for real).
        .executableTarget(name: "lp-workload", path: "Sources/lp-workload"),
        // Small C helper the Userfaultfd tests drive as a separate process (forks, remaps, exits).
        .executableTarget(name: "uffd-testee", path: "Sources/uffd-testee"),
        .executableTarget(
            name: "lazy-pagesd",
            dependencies: [
                "LazyPagesCRIU", "LazyPagesEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "lazy-pages",
            dependencies: [
                "Userfaultfd", "CRIUImages", "RestoreSimulator", "LazyPagesCRIU",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "UserfaultfdTests", dependencies: ["Userfaultfd"]),
        .testTarget(name: "CRIUImagesTests", dependencies: ["CRIUImages"]),
        .testTarget(
            name: "LazyPagesTests",
            dependencies: ["LazyPagesEngine", "LazyPagesCRIU", "RestoreSimulator", "CRIUImages", "Userfaultfd"]),
    ],
    swiftLanguageModes: [.v6]
)
