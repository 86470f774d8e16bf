import Foundation

/// A private anonymous read-write mapping of `length` bytes, or nil (unmap it with `munmap`).
public func mmapAnonymous(_ length: Int) -> UnsafeMutableRawPointer? {
    let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return p == MAP_FAILED ? nil : p
}
