/// Watches the uffds of a restore from outside the engine (e.g. a guardian process that must hold a copy of each
/// one). Every call is made on the engine's loop thread, synchronously, at the moment the engine adopts or lets go
/// of a uffd; `uffd` is only borrowed for the duration of the call (duplicate it to keep it).
public protocol RestoreObserver: AnyObject {
    /// A task of the restore handed over its uffd; `id` is the engine's process id.
    func taskAdded(id: Int, imagePid: Int32, uffd: Int32)
    /// The process `parent` forked; `child` is the engine id of the child, `uffd` its new uffd.
    func processForked(parent: Int, child: Int, uffd: Int32)
    /// The engine is done with process `id` (all pages delivered, or the process is gone); its uffd is closed next.
    func processRetired(id: Int)
}
