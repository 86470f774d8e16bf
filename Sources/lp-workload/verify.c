/* lp-workload: byte-for-byte page checks, counters, and the seeded random generator. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

#define MAX_FAIL_LINES 8

static const uint8_t zero_page[LP_PAGE];
static uint64_t pages_checked, pages_failed, fail_lines;

/* splitmix64 */
uint64_t rng_next(struct rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t rng_below(struct rng *r, uint64_t n) { return n ? rng_next(r) % n : 0; }

void shuffle(struct rng *r, struct page_ref *pages, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(r, i);
        struct page_ref t = pages[i - 1];
        pages[i - 1] = pages[j];
        pages[j] = t;
    }
}

const char *describe_exp(uint64_t exp, char *buf, size_t size) {
    if (exp == EXP_ZERO) {
        snprintf(buf, size, "zeros");
    } else if (exp == EXP_ANY) {
        snprintf(buf, size, "remote");
    } else {
        int file = (int)(exp >> 40);
        const char *path = g_plan.files[file].path, *slash = strrchr(path, '/');
        snprintf(buf, size, "%s+0x%llx", slash ? slash + 1 : path,
                 (unsigned long long)((exp & ((1ULL << 40) - 1)) * LP_PAGE));
    }
    return buf;
}

/* The patch table, kept sorted by address (few entries, added before the checks that need them start). */
struct patch {
    uint64_t addr;
    size_t offset, len;
    uint8_t *bytes;
};
static struct patch *patches;
static size_t npatches, patches_cap;

void patch_add(uint64_t addr, size_t offset, const void *bytes, size_t len) {
    if (offset + len > LP_PAGE) die("patch 0x%llx+%zu+%zu crosses the page", (unsigned long long)addr, offset, len);
    if (npatches == patches_cap) {
        patches_cap = patches_cap ? patches_cap * 2 : 64;
        patches = realloc(patches, patches_cap * sizeof *patches);
        if (!patches) die("out of memory");
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) die("out of memory");
    memcpy(copy, bytes, len);
    size_t at = npatches;
    while (at > 0 && patches[at - 1].addr > addr) at--;
    memmove(patches + at + 1, patches + at, (npatches - at) * sizeof *patches);
    patches[at] = (struct patch){addr, offset, len, copy};
    npatches++;
}

/* Lays every patch of page `addr` over `page` (a private copy of the expected bytes); returns how many. */
static int apply_patches(uint64_t addr, uint8_t *page) {
    if (!npatches) return 0;
    size_t lo = 0, hi = npatches;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (patches[mid].addr < addr) lo = mid + 1;
        else hi = mid;
    }
    int n = 0;
    for (; lo < npatches && patches[lo].addr == addr; lo++, n++)
        memcpy(page + patches[lo].offset, patches[lo].bytes, patches[lo].len);
    return n;
}

int verify_page(uint64_t addr, uint64_t exp) {
    const volatile uint8_t *page = (const volatile uint8_t *)addr;
    if (exp == EXP_ANY) { /* data from a page server: only make sure it arrives */
        (void)page[0];
        __atomic_fetch_add(&pages_checked, 1, __ATOMIC_RELAXED);
        return 1;
    }
    const uint8_t *want =
        exp == EXP_ZERO ? zero_page : g_plan.files[exp >> 40].map + (exp & ((1ULL << 40) - 1)) * LP_PAGE;
    uint8_t patched[LP_PAGE];
    if (npatches) {
        memcpy(patched, want, LP_PAGE);
        if (apply_patches(addr, patched)) want = patched;
    }
    __atomic_fetch_add(&pages_checked, 1, __ATOMIC_RELAXED);
    if (memcmp((const void *)addr, want, LP_PAGE) == 0) return 1;
    __atomic_fetch_add(&pages_failed, 1, __ATOMIC_RELAXED);
    if (__atomic_fetch_add(&fail_lines, 1, __ATOMIC_RELAXED) < MAX_FAIL_LINES) {
        size_t i = 0;
        while (i < LP_PAGE && page[i] == want[i]) i++;
        if (i == LP_PAGE) i = 0; /* changed under us between the two reads */
        char source[256];
        say("FAIL task=%d pid=%d scenario=%s seed=%llu addr=0x%llx byte=%zu expected=0x%02x got=0x%02x source=%s",
            g_plan.vpid, (int)getpid(), g_scenario, (unsigned long long)g_seed, (unsigned long long)addr, i, want[i],
            page[i], describe_exp(exp, source, sizeof source));
    }
    return 0;
}

size_t verify_list(const struct page_ref *pages, size_t n) {
    size_t good = 0;
    for (size_t i = 0; i < n; i++) good += (size_t)verify_page(pages[i].addr, pages[i].exp);
    return good;
}

void verify_reset_counters(void) { pages_checked = pages_failed = fail_lines = 0; }
uint64_t verified_pages(void) { return __atomic_load_n(&pages_checked, __ATOMIC_RELAXED); }
uint64_t failed_pages(void) { return __atomic_load_n(&pages_failed, __ATOMIC_RELAXED); }
