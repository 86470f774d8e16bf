import Foundation

/// Polls `condition` every `interval` until it holds or `seconds` of wall-clock time have passed (a safety net, not a
/// delay); true when it held. Bounded by time, not by a count of sleeps: a sleep that a signal cuts short (the test
/// process gets many, as other tests' children exit) must not shorten the bound.
public func waitUntil(seconds: Double, every interval: Duration = .milliseconds(10), _ condition: () throws -> Bool)
    rethrows -> Bool
{
    let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
    while true {
        if try condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        let (whole, attoseconds) = interval.components
        usleep(UInt32(whole) * 1_000_000 + UInt32(attoseconds / 1_000_000_000_000))
    }
}
