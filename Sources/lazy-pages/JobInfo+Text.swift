import Foundation
import LazyPagesControl

extension JobInfo {
    /// `3  criu  running  [#########...........]  45%  1234/2730 pages  56 faults  12.3 MiB/s  uid 0  /work/lazy-pages.socket`
    var line: String {
        let fraction = pagesExpected > 0 ? min(1, Double(pagesHome) / Double(pagesExpected)) : (state == .completed ? 1 : 0)
        let rate = elapsedSeconds > 0 ? Double(pagesHome * 4096) / elapsedSeconds / Double(1 << 20) : 0
        var text = "\(id.padding(toLength: max(4, id.count), withPad: " ", startingAt: 0)) "
            + "\(spec.frontEnd.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0)) "
            + "\(state.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) "
            + "\(Self.bar(fraction)) \(String(format: "%3d%%", Int(fraction * 100)))  "
            + "\(pagesHome)/\(pagesExpected) pages  \(faults) faults  "
            + String(format: "%.1f MiB/s", rate) + "  uid \(owner)  \(socket)"
        if let name = spec.name { text += "  (\(name))" }
        if let restarts, restarts > 0 {
            let when = lastAdoptedAt.map { " (last adopted \(Self.timestamp($0)))" } ?? ""
            text += "\n     re-adopted after \(restarts) daemon restart\(restarts == 1 ? "" : "s")\(when)"
        }
        if let reason { text += "\n     \(state == .failed ? "failed" : "cancelled"): \(reason)" }
        return text
    }

    /// `2026-12-02T01:23:45Z` for a Unix time.
    static func timestamp(_ seconds: Double) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }

    static func bar(_ fraction: Double, width: Int = 20) -> String {
        let filled = Int((fraction * Double(width)).rounded(.down))
        return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
    }

    static let header = "ID   FRONT END   STATE     PROGRESS"
}
