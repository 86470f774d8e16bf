// lp-image-fuzz: a libFuzzer target over the CRIU image parser. Built only by `Scripts/fuzz-images` (the target
// exists in Package.swift only when LP_LIBFUZZER is set, so the default build and `swift test` never see it).
//
// Each input replaces one image file of a small written image set (the first byte picks which: inventory, pstree,
// mm, pagemap), then the set is read as the daemon reads it (`ImageSet`, `process(pid:)`). Reading must either
// succeed with runs that are page-aligned, ordered, inside one VMA and inside the pages file, or throw `ImageError`.
// Anything else — another error, an inconsistent result, a trap — is a finding (libFuzzer saves the input).
import CRIUImages
import Foundation
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

let directory: String = {
    var template = Array("/tmp/lp-image-fuzz-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { fatalError("mkdtemp: errno \(errno)") }
    let path = String(cString: made)
    let page = UInt64(basePageSize)
    let base: UInt64 = 0x7f00_0000_0000
    let fill = PagePattern.filler(seed: 7, base: base)
    try! ImageWriter.write(directory: path, processes: [
        ProcessSpec(pid: 100, ppid: 0, vmas: [
            VMA(start: base, end: base + 64 * page, prot: 3, flags: 0x22, status: 0x41),
            VMA(start: base + 128 * page, end: base + 160 * page, prot: 3, flags: 0x22, status: 0x41),
        ], runs: [
            RunSpec(address: base, pageCount: 40, flags: [.lazy], fill: fill),
            RunSpec(address: base + 40 * page, pageCount: 8, flags: [.present], fill: fill),
            RunSpec(address: base + 130 * page, pageCount: 20, flags: [.lazy], fill: fill),
        ]),
    ])
    return path
}()

let targets = ["inventory.img", "pstree.img", "mm-100.img", "pagemap-100.img"]
let originals: [String: Data] = Dictionary(uniqueKeysWithValues: targets.map {
    ($0, FileManager.default.contents(atPath: "\(directory)/\($0)")!)
})

func check(_ image: ProcessImage) -> String? {
    var previousEnd: UInt64 = 0
    for run in image.lazyRuns {
        if run.address % UInt64(basePageSize) != 0 { return "lazy run at \(run.address) unaligned" }
        if run.pageCount <= 0 { return "lazy run with \(run.pageCount) pages" }
        if run.address < previousEnd { return "lazy runs overlap or are out of order" }
        previousEnd = run.end
        guard let vma = image.vma(containing: run.address), run.end <= vma.end, run.end > run.address else {
            return "lazy run not inside one VMA"
        }
        if case .file(let path, let offset) = run.data {
            var status = stat()
            guard stat(path, &status) == 0 else { return "pages file missing" }
            if offset + UInt64(run.pageCount * basePageSize) > UInt64(status.st_size) { return "run data past the end" }
        }
    }
    return nil
}

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let which = bytes.first else { return }
    let name = targets[Int(which) % targets.count]
    let path = "\(directory)/\(name)"
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes.dropFirst()))
    defer { _ = FileManager.default.createFile(atPath: path, contents: originals[name]) }
    do {
        let set = try ImageSet(directory: directory)
        for task in set.tasks {
            let image = try set.process(pid: Int32(bitPattern: task.pid))
            if let problem = check(image) { fatalError("\(name): inconsistent image accepted: \(problem)") }
        }
    } catch {
        // A clear refusal (`ImageError`, the only error these calls throw): what bad input must get.
    }
}

#if LP_LIBFUZZER
// The entry point libFuzzer's archive expects (`-sanitize=fuzzer` links it whole).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

// SwiftPM makes this module's top-level code the program's `main`, so libFuzzer's own `main` never runs: start its
// driver from here.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

// An empty corpus directory is seeded with the unmutated files (selector byte first), so the search starts from valid
// images rather than from nothing.
for argument in CommandLine.arguments.dropFirst() where !argument.hasPrefix("-") {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: argument), entries.isEmpty else { continue }
    for (index, name) in targets.enumerated() {
        _ = FileManager.default.createFile(atPath: "\(argument)/seed-\(name)", contents: Data([UInt8(index)]) + originals[name]!)
    }
}
var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
})
#else
// Without libFuzzer: replay the files given (a corpus or a crash libFuzzer saved).
for file in CommandLine.arguments.dropFirst() {
    let data = FileManager.default.contents(atPath: file) ?? Data()
    data.withUnsafeBytes { fuzzOne($0) }
    print("ok \(file)")
}
#endif
