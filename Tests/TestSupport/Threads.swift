import Foundation

/// Runs `body` on a thread of its own (a restore's loop, which blocks); the returned closure waits for it to return
/// and gives its result.
public func onThread<T>(_ body: @escaping @Sendable () -> T) -> () -> T {
    let result = ThreadResult<T>()
    Thread {
        result.value = body()
        result.done.signal()
    }.start()
    return {
        result.done.wait()
        result.done.signal()  // a second call returns at once
        return result.value!
    }
}

/// What the thread of `onThread` returned, handed over through the semaphore.
private final class ThreadResult<T>: @unchecked Sendable {
    var value: T?
    let done = DispatchSemaphore(value: 0)
}
