import LinuxSupport
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// The image set a page-server client holds after `criu dump --lazy-pages --port`: every image of a normal dump,
/// but each `LAZY|PRESENT` pagemap entry is `LAZY` only and its pages are not in the pages file (they are fetched
/// from the page server). Made from a normal dump on disk, so that one real dump serves both a page server
/// (`criu page-server --lazy-pages -D DUMP`, `lazy-pages page-server -D DUMP`) and its clients.
public enum RemoteView {
    /// Writes the client's view of the dump in `source` into `destination` (created; must not hold images yet).
    /// Files other than pagemaps and pages files are copied as they are; entries in a parent image are refused
    /// (a page server serves one image set).
    public static func write(from source: String, to destination: String) throws {
        try ImageWriter.makeDirectories(destination)
        guard let directory = opendir(source) else {
            throw ImageError(file: source, problem: "cannot open directory: \(SystemCallError.reason(errno))")
        }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(directory)
        for name in names where !name.hasPrefix("pages-") {
            if name.hasPrefix("pagemap-"), name.hasSuffix(".img"),
               let pid = Int32(name.dropFirst("pagemap-".count).dropLast(".img".count)) {
                try writeLazyOnly(pid: pid, source: source, destination: destination)
            } else if case .regular = try fileStatus(source + "/" + name) {
                try ImageWriter.writeFile(path: destination + "/" + name, bytes: readWholeFile(source + "/" + name))
            }
        }
    }

    private static func writeLazyOnly(pid: Int32, source: String, destination: String) throws {
        let pagemap = try PagemapFile(directory: source, pid: pid)
        var image = ImageWriter.header(.pagemap)
        var head = Criu_pagemap_head()
        head.pagesID = pagemap.pagesID
        try ImageWriter.appendMessage(head, to: &image)
        let input = open(pagemap.pagesPath, O_RDONLY | O_CLOEXEC)
        defer { if input >= 0 { close(input) } }
        let outputPath = "\(destination)/pages-\(pagemap.pagesID).img"
        let output = try ImageWriter.createFile(outputPath)
        defer { close(output) }
        let page = UInt64(basePageSize)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for (number, entry) in pagemap.entries.enumerated() {
            guard !entry.flags.contains(.parent) else {
                throw ImageError(file: pagemap.path, problem: "entry \(number) is in a parent image; a remote view needs one image set")
            }
            var flags = entry.flags
            if flags.contains(.lazy) {
                flags.remove(.present)
            } else if flags.contains(.present) {
                // An eager entry: its pages stay local, in order.
                var offset = pagemap.fileOffsets[number]
                var remaining = entry.pageCount * page
                while remaining > 0 {
                    let n = Int(min(remaining, UInt64(buffer.count)))
                    let got = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, n, off_t(offset)) }
                    guard got == n else {
                        throw ImageError(file: pagemap.pagesPath, problem: "short read at \(offset): \(SystemCallError.reason(errno))")
                    }
                    try buffer.withUnsafeBytes { try ImageWriter.writeAll(fd: output, path: outputPath, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    offset += UInt64(n)
                    remaining -= UInt64(n)
                }
            }
            var raw = Criu_pagemap_entry()
            raw.vaddr = entry.vaddr
            raw.compatNrPages = 0
            raw.nrPages = entry.pageCount
            raw.flags = flags.rawValue
            try ImageWriter.appendMessage(raw, to: &image)
        }
        try ImageWriter.writeFile(path: "\(destination)/pagemap-\(pid).img", bytes: image)
    }
}
