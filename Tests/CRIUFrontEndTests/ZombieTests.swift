import CRIUImages
import Foundation
import LazyPagesCRIU
import RestoreSimulator
import TestSupport
import Testing

/// Tasks without memory images: a zombie (dead in its `core-PID.img`: CRIU writes no `mm-`/`pagemap-` for it) and a
/// task the restorer announces with a negative pid. Every other missing image is still an error naming the file.
@Suite struct ZombieTests {
    /// Pids 100 and 101 alive, 102 a zombie.
    static func images() throws -> String {
        let images = try makeTemporaryDirectory("zombies") + "/images"
        try ImageLayout.mixed.write(to: images, tasks: 3, bytesPerTask: 256 << 10, zombies: 1)
        return images
    }

    @Test func aDeadTaskNeedsNoMemoryImages() throws {
        let images = try Self.images()
        let set = try ImageSet(directory: images)
        #expect(try set.state(ofTask: 102) == .dead)
        #expect(try set.state(ofTask: 100) == .alive)
        #expect(!FileManager.default.fileExists(atPath: images + "/mm-102.img"))
        let source = try CRIUImageSource(directory: images)
        #expect(source.deadTasks == [102])
        #expect(try source.addressSpace(forTask: 100).extents.isEmpty == false)
        #expect {
            _ = try source.addressSpace(forTask: 102)
        } throws: { error in
            (error as? LazyPagesError)?.message.contains("core-102.img (a zombie, no memory)") == true
        }
    }

    @Test func aLiveTaskWithoutItsMemoryImagesIsRefusedNamingTheFile() throws {
        let images = try Self.images()
        try FileManager.default.removeItem(atPath: images + "/mm-101.img")
        #expect {
            _ = try CRIUImageSource(directory: images)
        } throws: { error in
            (error as? ImageError) == ImageError(file: images + "/mm-101.img", problem: "missing file")
        }
        try FileManager.default.removeItem(atPath: images + "/pagemap-100.img")
        try FileManager.default.removeItem(atPath: images + "/core-101.img")
        #expect {
            _ = try CRIUImageSource(directory: images)
        } throws: { error in
            (error as? ImageError) == ImageError(file: images + "/pagemap-100.img", problem: "missing file")
        }
    }

    @Test func aCorruptCoreImageIsRefusedNamingTheFile() throws {
        let images = try Self.images()
        try Data([0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55, 2, 0, 0, 0, 0x1a, 0x05])
            .write(to: URL(fileURLWithPath: images + "/core-101.img"))
        #expect {
            _ = try CRIUImageSource(directory: images)
        } throws: { error in
            guard let error = error as? ImageError else { return false }
            return error.file == images + "/core-101.img" && error.problem.contains("core_entry")
        }
    }

    /// Without a core image to say so, a task whose memory images are missing may still be a zombie: the restorer
    /// decides. Announced with a negative pid it is fine; sent with a uffd, the restore fails naming the file.
    @Test(.timeLimit(.minutes(2))) func withoutACoreImageTheRestorerDecides() throws {
        let images = try Self.images()
        for name in ["core-101.img", "mm-101.img", "pagemap-101.img"] {
            try FileManager.default.removeItem(atPath: images + "/" + name)
        }
        let source = try CRIUImageSource(directory: images)
        #expect {
            _ = try source.addressSpace(forTask: 101)
        } throws: { error in
            (error as? LazyPagesError)?.message == "cannot serve pid 101: \(images)/mm-101.img: missing file"
        }

        let daemon = try ChildProcess(
            try BuiltProducts.path(of: "lazy-pagesd"), ["-D", images, "--status-fd", "3", "-o", "daemon.log", "-v4"],
            directory: images, name: "daemon", statusFD: true)
        try #require(daemon.waitUntilReady(), "no status byte: \(daemon.stderrText)")
        let simulation = try RestoreSimulation(options: SimulationOptions(
            imagesDirectory: images, scenario: "verify", zombies: [101]))
        try simulation.start()
        let report = try simulation.wait()
        #expect(report.allPassed, "\(describe(report))")
        #expect(daemon.wait() == 0, "\(daemon.stderrText)")
        let log = try String(contentsOfFile: images + "/daemon.log", encoding: .utf8)
        #expect(log.contains("zombie announced pid=101"))
        #expect(log.contains("zombie announced pid=102"))
    }
}
