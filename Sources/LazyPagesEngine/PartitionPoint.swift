extension Array {
    /// The index of the first element for which `belongsAfter` holds (`count` if none), by binary search, in an array
    /// where it holds for a suffix only (e.g. "ends after this address" over runs sorted by address).
    @inline(__always)
    func partitionPoint(where belongsAfter: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) >> 1
            if belongsAfter(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}
