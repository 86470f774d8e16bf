/// One heavy test at a time, across every suite of the test process.
///
/// swift-testing runs synchronous test bodies on Swift's cooperative thread pool, which has one thread per CPU. A
/// test that blocks for tens of seconds (a real `criu dump`/`restore`, a fuzzer, a service under attack) holds its
/// thread all that time; on a 2-CPU machine two of them at once starve every other test, whose `.timeLimit` timers
/// then fire together the moment a thread comes back (seen: 60 tests "timed out" at the same second). A heavy test
/// therefore runs its body through `oneHeavyTestAtATime`: it waits for the gate without holding a thread (an actor,
/// not a lock), then runs the body synchronously in its own task (so `#expect`/`#require` still belong to it) while
/// at least one other thread stays free for the light tests.
public func oneHeavyTestAtATime<T>(_ body: () throws -> T) async throws -> T {
    await HeavyTestGate.shared.enter()
    do {
        let result = try body()
        await HeavyTestGate.shared.leave()
        return result
    } catch {
        await HeavyTestGate.shared.leave()
        throw error
    }
}

actor HeavyTestGate {
    static let shared = HeavyTestGate()
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func enter() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func leave() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }
}
