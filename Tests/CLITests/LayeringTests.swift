import Foundation
import Testing

/// The import graph goes one way (ARCHITECTURE.md): executables → service → front ends → engine → typed uffd and
/// formats → the platform module → C shims. Checked from the source, both in `Package.swift`'s dependency lists and
/// in every `import` line under `Sources/`: a module may use only modules of a lower layer, and each C shim belongs
/// to one module.
@Suite struct LayeringTests {
    /// The layer of every module of the package (0: C shims, 1: the platform module ... 6: executables).
    static let layer: [String: Int] = [
        "CUserfaultfd": 0, "CLinuxSupport": 0, "CGuardian": 0, "CDescriptorPassing": 0, "CGnuTLS": 0,
        "CAllocationCounter": 0,
        "LinuxSupport": 1,
        "Userfaultfd": 2, "CRIUCommandLine": 2, "CRIUImages": 2, "LazyPagesControl": 2, "SystemdSupport": 2,
        "LazyPagesEngine": 3,
        "LazyPagesCRIU": 4, "LazyPagesFirecracker": 4, "PageServer": 4, "RestoreSimulator": 4,
        "LazyPagesService": 5, "LazyPagesBench": 5, "PageServerCommandLine": 5,
        "lazy-pagesd": 6, "lazy-pages": 6, "sd-activation-testee": 6, "lp-image-fuzz": 6,
        "lp-fault-allocations": 6,
        "TestSupport": 6,
        // C programs the executables start (and so build first): they use CDescriptorPassing only.
        "lp-workload": 5, "fc-emulator": 5, "uffd-testee": 5, "lp-bench-baseline": 5, "lp-bench-workload": 5,
        "lp-criu-workload": 5, "lp-socket-client": 5,
    ]
    /// C shims that exactly one module may use.
    static let owner: [String: String] = [
        "CUserfaultfd": "Userfaultfd", "CLinuxSupport": "LinuxSupport", "CGuardian": "LazyPagesEngine",
        "CGnuTLS": "PageServer", "CAllocationCounter": "lp-fault-allocations",
    ]

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func violation(_ module: String, uses dependency: String) -> String? {
        guard let from = layer[module] else { return "\(module) has no layer in LayeringTests (add it)" }
        guard let to = layer[dependency] else { return nil }  // a package from elsewhere (swift-log, ...)
        if let owner = owner[dependency], owner != module { return "\(module) uses \(dependency), \(owner)'s shim" }
        return to < from ? nil : "\(module) (layer \(from)) uses \(dependency) (layer \(to))"
    }

    /// `name: "X", dependencies: [...]` of every target in Package.swift (strings only: products are external).
    static func manifestDependencies() throws -> [String: [String]] {
        let text = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var result: [String: [String]] = [:]
        let target = try Regex(#"\.(?:target|executableTarget|testTarget|systemLibrary)\(\s*name:\s*"([^"]+)""#)
        let matches = text.matches(of: target)
        for (index, match) in matches.enumerated() where !text[match.range].hasPrefix(".testTarget") {
            let name = String(match.output[1].substring ?? "")
            let end = index + 1 < matches.count ? matches[index + 1].range.lowerBound : text.endIndex
            let body = text[match.range.upperBound..<end]
            guard let start = body.range(of: "dependencies:") else { result[name] = []; continue }
            var depth = 0
            var list = ""
            for character in body[start.upperBound...] {
                if character == "[" { depth += 1 } else if character == "]" { depth -= 1; if depth == 0 { break } }
                if depth > 0 { list.append(character) }
            }
            // Drop `.product(name: "...", package: "...")` entries: they name other packages.
            let local = list.replacing(try Regex(#"\.product\([^)]*\)"#), with: "")
            result[name] = local.matches(of: try Regex(#""([^"]+)""#)).map { String($0.output[1].substring ?? "") }
        }
        return result
    }

    @Test func packageDependenciesGoDownTheLayers() throws {
        let dependencies = try Self.manifestDependencies()
        #expect(dependencies["LazyPagesEngine"] != nil, "Package.swift was not parsed")
        for (module, list) in dependencies.sorted(by: { $0.key < $1.key }) {
            for dependency in list {
                if let problem = Self.violation(module, uses: dependency) { Issue.record("Package.swift: \(problem)") }
            }
        }
    }

    @Test func importLinesGoDownTheLayers() throws {
        let sources = Self.root.appendingPathComponent("Sources")
        let modules = try FileManager.default.contentsOfDirectory(atPath: sources.path)
        var checked = 0
        for module in modules.sorted() {
            let directory = sources.appendingPathComponent(module)
            guard let files = FileManager.default.enumerator(atPath: directory.path) else { continue }
            for case let file as String in files where file.hasSuffix(".swift") {
                let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
                for line in text.split(separator: "\n") where line.hasPrefix("import ") || line.hasPrefix("@testable import ") {
                    let imported = String(line.split(separator: " ").last ?? "")
                    checked += 1
                    if let problem = Self.violation(module, uses: imported) {
                        Issue.record("Sources/\(module)/\(file): \(problem)")
                    }
                }
            }
        }
        #expect(checked > 100, "only \(checked) import lines found under \(sources.path)")
    }
}
