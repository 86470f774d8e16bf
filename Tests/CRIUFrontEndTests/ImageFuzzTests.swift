import CRIUImages
import Foundation
import LazyPagesCRIU
import LinuxSupport
import RestoreSimulator
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A seeded mutation fuzzer over real image files: the CRIU fixture and written image sets, with bytes of
/// `pagemap`, `mm`, `pstree` and `inventory` images flipped, overwritten with boundary values, truncated, inserted,
/// deleted or duplicated. Every input must either load (`CRIUImageSource`, as the daemon loads it) into something
/// consistent — runs page-aligned, inside a VMA, in order, data inside the pages file — or throw `ImageError`.
/// Anything else is a failure: another error type, a crash (the test process dies), or a hang (an input taking
/// more than a second). Bounded by time (`LP_FUZZ_SECONDS`, default 30) and count (`LP_FUZZ_INPUTS`, default 20 000).
@Suite(.serialized) struct ImageFuzzTests {
    struct Corpus {
        var directory: String
        var files: [String]  // mutable image files, relative names
    }

    static func corpora() throws -> [Corpus] {
        let fixture = SharedFixtures.criuTreeproc
        let mixed = try makeTemporaryDirectory()
        try ImageLayout.mixed.write(to: mixed, tasks: 2, bytesPerTask: 1 << 20)
        let many = try makeTemporaryDirectory()
        try ImageLayout.manyVMAs.write(to: many, tasks: 1, vmaCount: 200)
        let sparse = try makeTemporaryDirectory()
        try ImageLayout.sparse.write(to: sparse, tasks: 1, bytesPerTask: 64 << 20)
        return [
            Corpus(directory: fixture, files: ["inventory.img", "pstree.img", "mm-13288.img", "mm-13290.img",
                                               "pagemap-13288.img", "pagemap-13290.img"]),
            Corpus(directory: mixed, files: ["inventory.img", "pstree.img", "mm-100.img", "mm-101.img",
                                             "pagemap-100.img", "pagemap-101.img"]),
            Corpus(directory: many, files: ["pstree.img", "mm-100.img", "pagemap-100.img"]),
            Corpus(directory: sparse, files: ["mm-100.img", "pagemap-100.img"]),
        ]
    }

    struct Tally: CustomStringConvertible {
        var inputs = 0, loaded = 0, imageErrors = 0, otherErrors = 0, inconsistent = 0, hangs = 0
        var slowest: Double = 0
        var description: String {
            "inputs=\(inputs) loaded=\(loaded) imageErrors=\(imageErrors) otherErrors=\(otherErrors) "
                + "inconsistent=\(inconsistent) hangs=\(hangs) crashes=0 slowest=\(String(format: "%.3f", slowest))s"
        }
    }

    @Test(.timeLimit(.minutes(20))) func mutatedImagesLoadConsistentlyOrThrowImageError() async throws { try await oneHeavyTestAtATime {
        let environment = ProcessInfo.processInfo.environment
        let seconds = Double(environment["LP_FUZZ_SECONDS"] ?? "") ?? 30
        let limit = Int(environment["LP_FUZZ_INPUTS"] ?? "") ?? 20_000
        var rng = SeededRandom(seed: UInt64(environment["LP_FUZZ_SEED"] ?? "") ?? 20261125)
        let corpora = try Self.corpora()
        let scratch = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // One scratch copy per corpus: the page files are symlinked, the image files copied back after each input.
        var originals: [[String: [UInt8]]] = []
        for (index, corpus) in corpora.enumerated() {
            let copy = "\(scratch)/\(index)"
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            var bytes: [String: [UInt8]] = [:]
            for name in try FileManager.default.contentsOfDirectory(atPath: corpus.directory) where name.hasSuffix(".img") {
                let source = "\(corpus.directory)/\(name)"
                if corpus.files.contains(name) || name == "inventory.img" || name == "pstree.img"
                    || name.hasPrefix("mm-") || name.hasPrefix("pagemap-")
                {
                    let data = Array(try Data(contentsOf: URL(fileURLWithPath: source)))
                    bytes[name] = data
                    try Data(data).write(to: URL(fileURLWithPath: "\(copy)/\(name)"))
                } else {
                    try FileManager.default.createSymbolicLink(atPath: "\(copy)/\(name)", withDestinationPath: source)
                }
            }
            originals.append(bytes)
            // The unmutated corpus loads.
            _ = try CRIUImageSource(directory: copy)
        }
        var tally = Tally()
        var failures: [String] = []
        let start = ContinuousClock.now
        while tally.inputs < limit && ContinuousClock.now - start < .seconds(seconds) {
            let which = Int(rng.next() % UInt64(corpora.count))
            let corpus = corpora[which]
            let name = corpus.files[Int(rng.next() % UInt64(corpus.files.count))]
            let path = "\(scratch)/\(which)/\(name)"
            let original = originals[which][name]!
            let (mutated, how) = Self.mutate(original, &rng)
            try Data(mutated).write(to: URL(fileURLWithPath: path))
            tally.inputs += 1
            let began = ContinuousClock.now
            do {
                let source = try CRIUImageSource(directory: "\(scratch)/\(which)")
                for pid in source.taskPids {
                    if let problem = Self.inconsistency(source, pid: pid) {
                        tally.inconsistent += 1
                        if failures.count < 10 { failures.append("\(name) \(how): \(problem)") }
                    }
                }
                tally.loaded += 1
            } catch is ImageError {
                tally.imageErrors += 1
            } catch {
                tally.otherErrors += 1
                if failures.count < 10 { failures.append("\(name) \(how): \(type(of: error)): \(error)") }
            }
            let took = ContinuousClock.now - began
            let secondsTaken = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
            tally.slowest = max(tally.slowest, secondsTaken)
            if took > .seconds(1) {
                tally.hangs += 1
                if failures.count < 10 { failures.append("\(name) \(how): took \(took)") }
            }
            try Data(original).write(to: URL(fileURLWithPath: path))
        }
        print("image fuzzer: \(tally)")
        #expect(tally.inputs >= 1000, "too few inputs in the time allowed: \(tally)")
        #expect(tally.otherErrors == 0 && tally.inconsistent == 0 && tally.hangs == 0, "\(tally)\n\(failures.joined(separator: "\n"))")
        #expect(tally.imageErrors > 0 && tally.loaded > 0, "the mutations should both break and keep images: \(tally)")
    }}

    /// What a loaded image must satisfy for the daemon to serve it safely; nil when it does.
    static func inconsistency(_ source: CRIUImageSource, pid: Int32) -> String? {
        guard let image = try? source.images.process(pid: pid) else {
            // A task without memory images (a zombie, or a pid without a core image to tell) loads with nothing to
            // serve; a uffd sent for it must be refused naming the missing file.
            do {
                _ = try source.addressSpace(forTask: pid)
                return "process(\(pid)) throws, yet it has an address space"
            } catch {
                let named = ["mm-\(pid).img", "pagemap-\(pid).img", "core-\(pid).img"].contains { error.message.contains($0) }
                return named ? nil : "no memory images for \(pid), and the refusal names none: \(error.message)"
            }
        }
        guard let space = try? source.addressSpace(forTask: pid) else { return "no address space for \(pid)" }
        var previousEnd: UInt64 = 0
        for run in image.lazyRuns {
            if run.address % UInt64(basePageSize) != 0 { return "lazy run at \(run.address) unaligned" }
            if run.pageCount <= 0 { return "lazy run at \(run.address) with \(run.pageCount) pages" }
            if run.address < previousEnd { return "lazy runs overlap or are out of order at \(run.address)" }
            previousEnd = run.end
            guard let vma = image.vma(containing: run.address), run.end <= vma.end, run.end > run.address else {
                return "lazy run \(run.address)+\(run.pageCount) is not inside one VMA"
            }
            if case .file(let path, let offset) = run.data {
                var status = stat()
                guard stat(path, &status) == 0 else { return "pages file \(path) missing" }
                if offset + UInt64(run.pageCount * basePageSize) > UInt64(status.st_size) {
                    return "lazy run data past the end of \(path)"
                }
            }
        }
        if space.pendingPages != image.lazyPageCount { return "address space has \(space.pendingPages) pages, image \(image.lazyPageCount)" }
        return nil
    }

    /// One random mutation of `bytes`, and a description of it.
    static func mutate(_ bytes: [UInt8], _ rng: inout SeededRandom) -> ([UInt8], String) {
        var out = bytes
        let count = max(out.count, 1)
        let at = Int(rng.next() % UInt64(count))
        switch rng.next() % 8 {
        case 0:
            let bit = UInt8(1) << UInt8(rng.next() % 8)
            if !out.isEmpty { out[at] ^= bit }
            return (out, "flip bit \(bit) at \(at)")
        case 1:
            let values: [UInt8] = [0, 0xff, 0x7f, 0x80, 1]
            let value = values[Int(rng.next() % UInt64(values.count))]
            if !out.isEmpty { out[at] = value }
            return (out, "byte \(value) at \(at)")
        case 2:
            out = Array(out.prefix(at))
            return (out, "truncate to \(at)")
        case 3:
            let n = 1 + Int(rng.next() % 16)
            out.insert(contentsOf: (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: min(at, out.count))
            return (out, "insert \(n) random bytes at \(at)")
        case 4:
            let n = min(1 + Int(rng.next() % 16), out.count - min(at, out.count))
            out.removeSubrange(min(at, out.count)..<min(at, out.count) + n)
            return (out, "delete \(n) bytes at \(at)")
        case 5:
            // A 32-bit little-endian word overwritten with a boundary value (sizes, counts, magics).
            let words: [UInt32] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 4096, 0x1000_0000]
            let word = words[Int(rng.next() % UInt64(words.count))]
            for i in 0..<4 where at + i < out.count { out[at + i] = UInt8(truncatingIfNeeded: word >> (8 * i)) }
            return (out, "word \(word) at \(at)")
        case 6:
            // A varint byte made huge (protobuf lengths, addresses, page counts).
            if !out.isEmpty { out[at] |= 0x80 }
            if at + 1 < out.count { out[at + 1] = 0xff }
            return (out, "varint blow-up at \(at)")
        default:
            let n = min(1 + Int(rng.next() % 64), out.count - min(at, out.count))
            let chunk = Array(out[min(at, out.count)..<min(at, out.count) + n])
            out.insert(contentsOf: chunk, at: min(at, out.count))
            return (out, "duplicate \(n) bytes at \(at)")
        }
    }
}
