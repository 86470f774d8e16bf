/// The base page size everything here moves pages in: the kernel's on x86-64 and arm64 (4 KiB pages), the unit of
/// CRIU's pagemap entries and of every page counter in `RestoreStatistics`. The one name for it: an address space
/// may use a larger page size (hugetlbfs: 2 MiB), and every `pageSize` member (`AddressSpace`, `LazyExtent`,
/// `AddressSpace.Run`) is the size of *that* space's pages, a multiple of this.
public let basePageSize = 4096
