import Foundation
import LinuxSupport
import SwiftProtobuf
import TestSupport
import Testing

@testable import CRIUImages

/// The real CRIU 4.2 dump, found relative to the package root (`../shared/fixtures/criu-treeproc`).
let fixtureDirectory = SharedFixtures.criuTreeproc

let pageSize = UInt64(basePageSize)

/// The fixture's pattern (`PagePattern` under another name, spelled out independently for the tests).
func pattern(_ seed: UInt64, _ p: UInt64, _ w: UInt64) -> UInt64 {
    (((p + 1) &* 0x9E37_79B9_7F4A_7C15) ^ seed) &+ w &* 0x100_0000_01B3
}

/// Checks one page against `pattern(seed, p, ·)`.
func pageMatches(_ page: [UInt8], seed: UInt64, p: UInt64) -> Bool {
    guard page.count == basePageSize else { return false }
    return page.withUnsafeBytes { bytes in
        (0 ..< UInt64(basePageSize / 8)).allSatisfy { w in
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: Int(w) * 8, as: UInt64.self))
                == pattern(seed, p, w)
        }
    }
}

/// Reads the bytes of the page at `address` through the process's `lazyRuns` (nil when no run covers it or
/// its data is remote).
func lazyPage(_ process: ProcessImage, at address: UInt64) throws -> [UInt8]? {
    guard let run = process.lazyRun(containing: address), case .file(let path, let offset) = run.data else {
        return nil
    }
    return try readBytes(path: path, offset: offset + (address - run.address), count: basePageSize)
}

func readBytes(path: String, offset: UInt64, count: Int) throws -> [UInt8] {
    let handle = try #require(FileHandle(forReadingAtPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    return [UInt8](try handle.read(upToCount: count) ?? Data())
}

// MARK: - Byte surgery

func readFile(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Overwrites bytes at `offset`.
func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
    var content = try readFile(path)
    content.replaceSubrange(offset ..< offset + bytes.count, with: bytes)
    try writeFile(path, content)
}

func le32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

func truncateFile(_ path: String, to size: UInt64) throws {
    #expect(truncate(path, off_t(size)) == 0)
}

/// Rewrites the message payloads of an image file (header kept as is).
func editMessages(_ path: String, kind: ImageKind, _ body: (inout [[UInt8]]) throws -> Void) throws {
    let file = try ImageFile(path: path, kind: kind)
    var messages = file.messages.map { Array(file.bytes[$0]) }
    try body(&messages)
    var bytes = Array(file.bytes[0 ..< kind.header.count * 4])
    for message in messages {
        bytes += le32(UInt32(message.count))
        bytes += message
    }
    try writeFile(path, bytes)
}

/// Rewrites the entries of a pagemap file (the head is kept).
func editPagemapEntries(_ path: String, _ body: (inout [Criu_pagemap_entry]) throws -> Void) throws {
    try editMessages(path, kind: .pagemap) { messages in
        var entries = try messages.dropFirst().map { try Criu_pagemap_entry(serializedBytes: $0) }
        try body(&entries)
        messages = [messages[0]] + (try entries.map { try $0.serializedBytes(partial: true) as [UInt8] })
    }
}

/// Expects `body` to throw an ImageError about `file` whose problem contains `problem`; returns it.
@discardableResult
func expectImageError(
    file: String, _ problem: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> ImageError? {
    do {
        try body()
        Issue.record("expected an ImageError about \(file): \(problem)", sourceLocation: sourceLocation)
        return nil
    } catch {
        guard let error = error as? ImageError else {
            Issue.record("expected an ImageError, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
        #expect(error.file == file, sourceLocation: sourceLocation)
        #expect(error.problem.contains(problem), "\(error)", sourceLocation: sourceLocation)
        return error
    }
}

// MARK: - Layouts

let anonPrivate = VMA(start: 0, end: 0, prot: 3, flags: 0x22, status: 0x201)

func vma(_ start: UInt64, pages: UInt64) -> VMA {
    var vma = anonPrivate
    vma.start = start
    vma.end = start + pages * pageSize
    return vma
}

/// A run filled with `pattern(seed, (address - base) / 4096, w)`.
func run(_ address: UInt64, _ pages: Int, _ flags: PagemapFlags, seed: UInt64 = 1, base: UInt64? = nil) -> RunSpec {
    RunSpec(
        address: address, pageCount: pages, flags: flags,
        fill: PagePattern.filler(seed: seed, base: base ?? address))
}

let lazyPresent: PagemapFlags = [.lazy, .present]

/// A simple valid one-process set: VMA at 0x10000 (16 pages), one LAZY|PRESENT run of 4 pages at 0x11000,
/// one PRESENT run of 2 pages at 0x16000.
func writeSimpleSet(_ directory: String, pid: UInt32 = 100) throws {
    try ImageWriter.write(
        directory: directory,
        processes: [
            ProcessSpec(
                pid: pid, ppid: 0, vmas: [vma(0x10000, pages: 16)],
                runs: [run(0x11000, 4, lazyPresent), run(0x16000, 2, .present)])
        ])
}
