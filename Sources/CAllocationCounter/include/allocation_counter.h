#ifndef LP_ALLOCATION_COUNTER_H
#define LP_ALLOCATION_COUNTER_H

/* Counts the allocations the calling thread makes between lp_allocations_start() and lp_allocations_stop(): this
 * module defines malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign and free for the whole executable
 * that links it (they forward to glibc's __libc_* entry points), so only lp-fault-allocations may depend on it. */

/* Starts counting on the calling thread (from zero). */
void lp_allocations_start(void);
/* Stops counting on the calling thread; returns the allocations counted (malloc, calloc, realloc, the aligned
 * allocators) and stores the frees in *frees. */
long lp_allocations_stop(long *frees);

#endif
