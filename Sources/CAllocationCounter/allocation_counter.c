// Allocation counting by interposition: an executable's own malloc & co. take the place of glibc's for every
// library it loads (ELF symbol interposition, which glibc supports for exactly this), so each call is seen here and
// passed on to glibc's implementation. Counting is per thread, so only the thread under test is counted.
#include "allocation_counter.h"

#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *pointer);

static _Thread_local int counting;
static _Thread_local long allocations;
static _Thread_local long frees;

/* Called for every counted allocation: a breakpoint here (gdb -ex 'break lp_counted_allocation') shows what
 * allocates. */
__attribute__((noinline)) void lp_counted_allocation(void) { __asm__ volatile(""); }

void lp_allocations_start(void) {
    allocations = 0;
    frees = 0;
    counting = 1;
}

long lp_allocations_stop(long *freed) {
    counting = 0;
    if (freed) *freed = frees;
    return allocations;
}

void *malloc(size_t size) {
    if (counting) { allocations++; lp_counted_allocation(); }
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    if (counting) { allocations++; lp_counted_allocation(); }
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    if (counting) { allocations++; lp_counted_allocation(); }
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    if (counting) { allocations++; lp_counted_allocation(); }
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (counting) { allocations++; lp_counted_allocation(); }
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    if (counting) { allocations++; lp_counted_allocation(); }
    void *pointer = __libc_memalign(alignment, size);
    if (!pointer) return ENOMEM;
    *result = pointer;
    return 0;
}

void free(void *pointer) {
    if (counting && pointer) frees++;
    __libc_free(pointer);
}
