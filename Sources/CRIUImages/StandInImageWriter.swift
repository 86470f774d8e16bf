// STAND-IN, to be replaced: writes a minimal CRIU image set (inventory, pstree, mm, pagemap, pages).

#if canImport(Glibc)
import Glibc
#endif

public enum ImageWriter {
    public static func write(directory: String, processes: [ProcessSpec], parentDirectory: String? = nil) throws {
        typealias W = StandInWire
        var inventory: [UInt8] = []
        W.appendField(1, varint: 2, to: &inventory)
        try W.writeFile(directory + "/inventory.img", W.imageBytes(magic: W.inventoryMagic, messages: [inventory]))
        var pstree: [[UInt8]] = []
        for (index, p) in processes.enumerated() {
            var entry: [UInt8] = []
            W.appendField(1, varint: UInt64(p.pid), to: &entry)
            W.appendField(2, varint: UInt64(p.ppid), to: &entry)
            W.appendField(3, varint: UInt64(p.pid), to: &entry)
            W.appendField(4, varint: UInt64(p.pid), to: &entry)
            W.appendField(5, varint: UInt64(p.pid), to: &entry)
            pstree.append(entry)

            var mm: [UInt8] = []
            for field in 1...12 { W.appendField(field, varint: 0, to: &mm) }
            for v in p.vmas {
                var vma: [UInt8] = []
                W.appendField(1, varint: v.start, to: &vma)
                W.appendField(2, varint: v.end, to: &vma)
                W.appendField(3, varint: 0, to: &vma)
                W.appendField(4, varint: 0, to: &vma)
                W.appendField(5, varint: UInt64(v.prot), to: &vma)
                W.appendField(6, varint: UInt64(v.flags), to: &vma)
                W.appendField(7, varint: UInt64(v.status), to: &vma)
                W.appendField(14, bytes: vma, to: &mm)
            }
            try W.writeFile(directory + "/mm-\(p.pid).img", W.imageBytes(magic: W.mmMagic, messages: [mm]))

            let pagesID = UInt64(index + 1)
            var head: [UInt8] = []
            W.appendField(1, varint: pagesID, to: &head)
            var pagemap = [head]
            var pages: [UInt8] = []
            var page = [UInt8](repeating: 0, count: criuPageSize)
            for run in p.runs.sorted(by: { $0.address < $1.address }) {
                var entry: [UInt8] = []
                W.appendField(1, varint: run.address, to: &entry)
                W.appendField(4, varint: UInt64(run.flags.rawValue), to: &entry)
                W.appendField(5, varint: UInt64(run.pageCount), to: &entry)
                pagemap.append(entry)
                if run.flags.contains(.present) && !run.flags.contains(.parent) {
                    for i in 0..<run.pageCount {
                        page.withUnsafeMutableBytes { run.fill(run.address + UInt64(i * criuPageSize), $0) }
                        pages += page
                    }
                }
            }
            try W.writeFile(directory + "/pagemap-\(p.pid).img", W.imageBytes(magic: W.pagemapMagic, messages: pagemap))
            try W.writeFile(directory + "/pages-\(pagesID).img", pages)
        }
        try W.writeFile(directory + "/pstree.img", W.imageBytes(magic: W.pstreeMagic, messages: pstree))
        if let parentDirectory {
            _ = unlink(directory + "/parent")
            guard symlink(parentDirectory, directory + "/parent") == 0 else {
                throw ImageError(file: "parent", problem: String(cString: strerror(errno)))
            }
        }
    }
}
