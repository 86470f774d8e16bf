/*
 * lp-workload: the reliability scenarios (ported in spirit from CRIU's lazy-pages zdtm tests and the kernel's uffd
 * selftests). Each checks every page it owns against the expectation model, like the scenarios in scenarios.c:
 *
 *   uffd-events      forks; then parent and child each: MADV_DONTNEED on random sub-ranges (they read zeros), swap
 *                    the two largest regions with three mremap(MREMAP_FIXED) through a spare address, grow the
 *                    largest with mremap (data kept, the tail reads zeros); then every page. (CRIU's uffd-events.)
 *   fork2-storm      two rounds of fork storms three generations deep: 6 children, each forking 2 grandchildren,
 *                    each forking a great-grandchild; every process checks random pages, the first great-grandchild
 *                    checks every page, the top process checks every page between its forks and folds in all.
 *   fork-exit-early  a thread faults every page (keeping the daemon busy) while the main thread forks 64 children
 *                    that exit at once (their fork events are read after they are gone; every other one checks one
 *                    page first); then every page again.
 *   lazy-thp         MADV_HUGEPAGE on an unaligned part of the largest region, then a 16-byte stamp written into
 *                    every other page of it (write faults on missing pages); the stamped pages must hold the image
 *                    data with the stamp laid over it. Reports the THP mode of /sys/kernel/mm/transparent_hugepage.
 *   many-vmas        over every region in address order: every 7th is unmapped, every 11th touched and dropped with
 *                    MADV_DONTNEED (zeros), every 13th moved with mremap; then every page. Meant for images with
 *                    thousands of one-page VMAs.
 *   sparse-huge      every page with image data, the first and last page of every region and 4096 random other
 *                    pages (which must read zeros); meant for one huge sparse VMA, where touching all of it would
 *                    only measure zero-page faults.
 *   kernel-faults    faults taken inside the kernel on lazy pages: FUTEX_WAIT (the kernel reads the futex word)
 *                    woken by a second thread's FUTEX_WAKE, FUTEX_WAIT with a wrong value (must fail EAGAIN, proving
 *                    the kernel read the image word), read(2) from a pipe into a lazy page (the rest of the page
 *                    keeps image data), write(2) from a lazy page into a pipe (the bytes must be the image's);
 *                    then every page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif

#define HUGE_PAGE (2UL << 20)

static void dont_need(uint64_t start, uint64_t pages) {
    if (madvise((void *)start, pages * LP_PAGE, MADV_DONTNEED))
        die("madvise 0x%llx+%llu: %s", (unsigned long long)start, (unsigned long long)pages, strerror(errno));
    model_zero(&g_model, start, pages * LP_PAGE);
}

/* ---- uffd-events ---------------------------------------------------------------------------------------------- */

static void events_body(uint64_t salt, char *details, size_t size) {
    struct rng r = rng_for(salt);
    size_t off = 0;
    /* 1. MADV_DONTNEED on three random sub-ranges (the first one touched beforehand). */
    for (int i = 0; i < 3 && g_model.n; i++) {
        struct segment *s = &g_model.segs[rng_below(&r, g_model.n)];
        uint64_t pages = 1 + rng_below(&r, s->npages < 8 ? s->npages : 8);
        uint64_t start = s->addr + rng_below(&r, s->npages - pages + 1) * LP_PAGE;
        if (i == 0) touch_some(&r, start, pages, pages);
        dont_need(start, pages);
        off += (size_t)snprintf(details + off, size - off, "dontneed=0x%llx+%llu ", (unsigned long long)start,
                                (unsigned long long)pages);
    }
    /* 2. Swap the two largest regions with three mremap(MREMAP_FIXED) through a spare address. */
    struct segment *s = need_largest(2), *t = model_largest(&g_model, s);
    uint64_t a = s->addr, b, pages;
    if (t) {
        b = t->addr;
        pages = s->npages < t->npages ? s->npages : t->npages;
    } else {
        pages = s->npages / 2;
        b = a + pages * LP_PAGE;
    }
    uint64_t len = pages * LP_PAGE;
    touch_some(&r, a, pages, pages / 8 + 1);
    uint64_t spare = move_fixed(a, len, (uint64_t)reserve(len));
    move_fixed(b, len, a);
    touch_some(&r, a, pages, pages / 8 + 1);
    move_fixed(spare, len, b);
    off += (size_t)snprintf(details + off, size - off, "swapped=0x%llx<->0x%llx+%llu ", (unsigned long long)a,
                            (unsigned long long)b, (unsigned long long)pages);
    /* 3. Grow the largest region (it may move); the tail reads zeros. */
    s = need_largest(1);
    uint64_t from = s->addr, glen = s->npages * LP_PAGE, extra = 8 * LP_PAGE;
    uint64_t to = grow(from, glen, extra);
    snprintf(details + off, size - off, "grew=0x%llx->0x%llx+%llu", (unsigned long long)from, (unsigned long long)to,
             (unsigned long long)((glen + extra) / LP_PAGE));
    verify_all(salt + 1);
}

int scenario_uffd_events(void) {
    char details[512];
    pid_t child = fork();
    if (child < 0) die("fork: %s", strerror(errno));
    if (child == 0) {
        verify_reset_counters();
        events_body(200, details, sizeof details);
        _exit(finish(0, "child", details));
    }
    events_body(100, details, sizeof details);
    int failed = wait_children(&child, 1);
    return finish((uint64_t)failed, "parent", details);
}

/* ---- fork2-storm ---------------------------------------------------------------------------------------------- */

struct storm {
    struct page_ref *all;
    size_t n;
};

/* A process of generation `depth` (1 child, 2 grandchild, 3 great-grandchild): checks pages, forks its own
 * children (2 at depth 1, 1 at depth 2), waits for them; returns its exit status. */
static int storm_member(const struct storm *st, int depth, uint64_t salt, int full) {
    verify_reset_counters();
    struct rng r = rng_for(salt);
    pid_t kids[2];
    int nkids = 0, want = depth == 1 ? 2 : depth == 2 ? 1 : 0;
    for (int i = 0; i < want; i++) {
        check_random(&r, st->all, st->n, 8);
        pid_t c = fork();
        if (c < 0) die("fork: %s", strerror(errno));
        if (c == 0) _exit(storm_member(st, depth + 1, salt * 4 + (uint64_t)i + 1, full && i == 0));
        kids[nkids++] = c;
    }
    if (full) {
        struct page_ref *copy = malloc((st->n ? st->n : 1) * sizeof *copy);
        if (!copy) die("out of memory");
        memcpy(copy, st->all, st->n * sizeof *copy);
        shuffle(&r, copy, st->n);
        verify_list(copy, st->n);
        free(copy);
    } else {
        check_random(&r, st->all, st->n, 24);
    }
    int bad = wait_children(kids, nkids);
    static const char *roles[] = {"top", "child", "grandchild", "great-grandchild"};
    if (failed_pages() || bad || (full && depth == 3)) return finish((uint64_t)bad, roles[depth], full ? "full" : "");
    return 0;
}

int scenario_fork2_storm(void) {
    enum { ROUNDS = 2, CHILDREN = 6 };
    struct storm st;
    st.all = model_flatten(&g_model, &st.n);
    struct rng r = rng_for(1);
    struct page_ref *order = malloc((st.n ? st.n : 1) * sizeof *order);
    if (!order) die("out of memory");
    memcpy(order, st.all, st.n * sizeof *order);
    shuffle(&r, order, st.n);
    size_t step = st.n / (ROUNDS * CHILDREN) + 1, done = 0;
    int failed = 0, forked = 0;
    for (int round = 0; round < ROUNDS; round++) {
        pid_t kids[CHILDREN];
        for (int i = 0; i < CHILDREN; i++) {
            size_t k = done + step <= st.n ? step : st.n - done;
            verify_list(order + done, k);
            done += k;
            pid_t c = fork();
            if (c < 0) die("fork: %s", strerror(errno));
            if (c == 0) _exit(storm_member(&st, 1, 10 + (uint64_t)round * 100 + (uint64_t)i, i == 0));
            kids[i] = c;
            forked++;
        }
        failed += wait_children(kids, CHILDREN);
    }
    verify_list(order + done, st.n - done);
    free(order);
    free(st.all);
    char details[96];
    snprintf(details, sizeof details, "rounds=%d children=%d processes=%d failed_children=%d", ROUNDS, forked,
             forked * 5, failed);
    return finish((uint64_t)failed, NULL, details);
}

/* ---- fork-exit-early ------------------------------------------------------------------------------------------ */

static void *fault_everything(void *arg) {
    (void)arg;
    verify_all(77);
    return NULL;
}

int scenario_fork_exit_early(void) {
    enum { CHILDREN = 64 };
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    struct rng r = rng_for(1);
    pthread_t busy;
    int e = pthread_create(&busy, NULL, fault_everything, NULL);
    if (e) die("pthread_create: %s", strerror(e));
    pid_t kids[CHILDREN];
    for (int i = 0; i < CHILDREN; i++) {
        uint64_t pick = rng_below(&r, n ? n : 1);
        pid_t c = fork();
        if (c < 0) die("fork: %s", strerror(errno));
        if (c == 0) {
            if (i % 2 && n) {
                verify_reset_counters();
                verify_page(all[pick].addr, all[pick].exp);
                if (failed_pages()) _exit(finish(0, "early-child", ""));
            }
            _exit(0);
        }
        kids[i] = c;
    }
    pthread_join(busy, NULL);
    int failed = wait_children(kids, CHILDREN);
    free(all);
    verify_all(2);
    char details[64];
    snprintf(details, sizeof details, "children=%d failed_children=%d", CHILDREN, failed);
    return finish((uint64_t)failed, NULL, details);
}

/* ---- lazy-thp ------------------------------------------------------------------------------------------------- */

/* The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled ("always", "madvise", "never"), or "absent". */
static const char *thp_mode(char *buf, size_t size) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");
    if (!f) return "absent";
    char line[128] = "";
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    char *open = strchr(line, '['), *close = open ? strchr(open, ']') : NULL;
    if (!open || !close) return "unknown";
    snprintf(buf, size, "%.*s", (int)(close - open - 1), open + 1);
    return buf;
}

int scenario_lazy_thp(void) {
    char mode[32];
    const char *thp = thp_mode(mode, sizeof mode);
    struct segment *s = need_largest(4);
    uint64_t start = s->addr + LP_PAGE, npages = s->npages - 2;
    if (start % HUGE_PAGE == 0) start += LP_PAGE, npages--; /* keep it unaligned */
    int advised = madvise((void *)start, npages * LP_PAGE, MADV_HUGEPAGE) == 0;
    if (!advised && strcmp(thp, "absent")) die("madvise(MADV_HUGEPAGE) 0x%llx: %s", (unsigned long long)start,
                                               strerror(errno));
    uint64_t written = 0;
    for (uint64_t i = 0; i < npages; i += 2) {
        uint64_t page = start + i * LP_PAGE;
        uint64_t stamp[2] = {page ^ 0x5354414D50000000ULL, g_seed + i};
        size_t offset = (size_t)((i * 64) % (LP_PAGE - sizeof stamp));
        patch_add(page, offset, stamp, sizeof stamp);
        volatile uint64_t *p = (volatile uint64_t *)(page + offset);
        p[0] = stamp[0]; /* a write fault on a missing page: the daemon's copy lands first */
        p[1] = stamp[1];
        written++;
    }
    verify_all(2);
    char details[160];
    snprintf(details, sizeof details, "thp=%s hugepage=0x%llx+%llu%s written=%llu", thp, (unsigned long long)start,
             (unsigned long long)npages, advised ? "" : "(not advised)", (unsigned long long)written);
    return finish(0, NULL, details);
}

/* ---- many-vmas ------------------------------------------------------------------------------------------------ */

struct span {
    uint64_t addr, npages;
};

static int span_order(const void *a, const void *b) {
    uint64_t x = ((const struct span *)a)->addr, y = ((const struct span *)b)->addr;
    return x < y ? -1 : x > y;
}

int scenario_many_vmas(void) {
    struct rng r = rng_for(1);
    size_t count = g_model.n;
    struct span *spans = malloc((count ? count : 1) * sizeof *spans);
    if (!spans) die("out of memory");
    for (size_t i = 0; i < count; i++) spans[i] = (struct span){g_model.segs[i].addr, g_model.segs[i].npages};
    qsort(spans, count, sizeof *spans, span_order);
    uint64_t unmapped = 0, dropped = 0, moved = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t len = spans[i].npages * LP_PAGE;
        if (i % 7 == 3) {
            if (munmap((void *)spans[i].addr, len)) die("munmap 0x%llx: %s", (unsigned long long)spans[i].addr,
                                                        strerror(errno));
            model_remove(&g_model, spans[i].addr, len);
            unmapped++;
        } else if (i % 11 == 5) {
            touch_some(&r, spans[i].addr, spans[i].npages, 1);
            dont_need(spans[i].addr, spans[i].npages);
            dropped++;
        } else if (i % 13 == 6) {
            move_fixed(spans[i].addr, len, (uint64_t)reserve(len));
            moved++;
        }
    }
    free(spans);
    verify_all(2);
    char details[128];
    snprintf(details, sizeof details, "regions=%zu unmapped=%llu dropped=%llu moved=%llu", count,
             (unsigned long long)unmapped, (unsigned long long)dropped, (unsigned long long)moved);
    return finish(0, NULL, details);
}

/* ---- sparse-huge ---------------------------------------------------------------------------------------------- */

int scenario_sparse_huge(void) {
    enum { ZERO_SAMPLE = 4096 };
    struct rng r = rng_for(1);
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    struct page_ref *list = malloc((n + ZERO_SAMPLE) * sizeof *list);
    if (!list) die("out of memory");
    size_t k = 0, data = 0;
    for (size_t i = 0; i < n; i++) {
        int edge = i == 0 || i + 1 == n || all[i - 1].addr + LP_PAGE != all[i].addr ||
                   all[i + 1].addr != all[i].addr + LP_PAGE;
        if (all[i].exp != EXP_ZERO) data++;
        if (all[i].exp != EXP_ZERO || edge) list[k++] = all[i];
    }
    size_t sampled = 0;
    for (size_t i = 0; i < ZERO_SAMPLE && n; i++) {
        const struct page_ref *p = &all[rng_below(&r, n)];
        if (p->exp == EXP_ZERO) list[k++] = *p, sampled++;
    }
    shuffle(&r, list, k);
    verify_list(list, k);
    free(list);
    free(all);
    char details[128];
    snprintf(details, sizeof details, "data_pages=%zu zero_sampled=%zu of=%zu", data, sampled, n);
    return finish(0, NULL, details);
}

/* ---- kernel-faults -------------------------------------------------------------------------------------------- */

static long futex(volatile uint32_t *word, int op, uint32_t value, const struct timespec *timeout) {
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}

static int in_lazy_run(uint64_t addr) {
    for (int i = 0; i < g_plan.nruns; i++) {
        const struct plan_run *r = &g_plan.runs[i];
        if (!r->eager && r->file >= 0 && addr >= r->addr && addr < r->addr + r->npages * LP_PAGE) return 1;
    }
    return 0;
}

static const uint8_t *image_bytes(uint64_t exp) {
    return g_plan.files[exp >> 40].map + (exp & ((1ULL << 40) - 1)) * LP_PAGE;
}

static int resident(uint64_t page) {
    unsigned char v = 0;
    return mincore((void *)page, LP_PAGE, &v) == 0 && (v & 1);
}

struct waiter {
    volatile uint32_t *word;
    uint32_t value;
    long rc;
    int err;
    volatile int started;
};

static void *futex_waiter(void *arg) {
    struct waiter *w = arg;
    struct timespec limit = {.tv_sec = 30};
    __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);
    w->rc = futex(w->word, FUTEX_WAIT_PRIVATE, w->value, &limit);
    w->err = errno;
    return NULL;
}

static void kernel_fault_fail(const char *what, uint64_t page, const char *detail) {
    say("FAIL task=%d pid=%d scenario=%s seed=%llu kernel-fault=%s addr=0x%llx %s", g_plan.vpid, (int)getpid(),
        g_scenario, (unsigned long long)g_seed, what, (unsigned long long)page, detail);
}

int scenario_kernel_faults(void) {
    struct rng r = rng_for(1);
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    /* Four distinct lazy pages with image data (a nonzero first word where possible, for the futex). */
    struct page_ref picks[4];
    size_t npicks = 0;
    shuffle(&r, all, n);
    /* passes: lazy with a nonzero word, lazy, then any page with image data (an image without lazy pages) */
    for (int pass = 0; pass < 3 && npicks < 4; pass++)
        for (size_t i = 0; i < n && npicks < 4; i++) {
            if (all[i].exp == EXP_ZERO || all[i].exp == EXP_ANY || (pass < 2 && !in_lazy_run(all[i].addr))) continue;
            if (pass == 0 && *(const uint32_t *)image_bytes(all[i].exp) == 0) continue;
            int dup = 0; /* far apart: the daemon's fault-around must not bring one in with another */
            for (size_t j = 0; j < npicks; j++)
                dup |= (picks[j].addr > all[i].addr ? picks[j].addr - all[i].addr : all[i].addr - picks[j].addr) <
                       (pass < 2 ? 64 * LP_PAGE : LP_PAGE);
            if (!dup) picks[npicks++] = all[i];
        }
    free(all);
    if (npicks < 4) die("kernel-faults needs 4 pages with image data, found %zu", npicks);
    uint64_t extra = 0;
    int missing = 0;
    char note[128];

    /* 1. FUTEX_WAIT on a missing page: the kernel faults on the word; a second thread wakes us. */
    uint64_t p0 = picks[0].addr;
    missing += !resident(p0);
    struct waiter w = {.word = (volatile uint32_t *)p0, .value = *(const uint32_t *)image_bytes(picks[0].exp)};
    pthread_t waiter;
    int e = pthread_create(&waiter, NULL, futex_waiter, &w);
    if (e) die("pthread_create: %s", strerror(e));
    struct timespec deadline, now;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 30;
    long woken = 0;
    do {
        /* Wake as soon as the waiter sleeps (a wake before that finds nobody; the waiter then sleeps on). */
        woken = futex((volatile uint32_t *)p0, FUTEX_WAKE_PRIVATE, 1, NULL);
        if (woken > 0) break;
        struct timespec pause = {.tv_nsec = 200000};
        nanosleep(&pause, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < deadline.tv_sec);
    pthread_join(waiter, NULL);
    if (woken <= 0 || w.rc != 0) {
        snprintf(note, sizeof note, "futex_wait=%ld errno=%s woken=%ld (expected the image word 0x%x)", w.rc,
                 w.rc ? strerror(w.err) : "0", woken, w.value);
        kernel_fault_fail("futex-wait", p0, note);
        extra++;
    }

    /* 2. FUTEX_WAIT with a value the image word does not hold: EAGAIN proves the kernel read the image's word. */
    uint64_t p1 = picks[1].addr;
    missing += !resident(p1);
    uint32_t wrong = *(const uint32_t *)image_bytes(picks[1].exp) ^ 1u;
    struct timespec limit = {.tv_sec = 30};
    long rc = futex((volatile uint32_t *)p1, FUTEX_WAIT_PRIVATE, wrong, &limit);
    if (rc != -1 || errno != EAGAIN) {
        snprintf(note, sizeof note, "futex_wait(wrong value)=%ld errno=%s", rc, rc ? strerror(errno) : "0");
        kernel_fault_fail("futex-mismatch", p1, note);
        extra++;
    }

    /* 3. read(2) from a pipe into a missing page: the rest of the page keeps its image data. */
    int fds[2];
    if (pipe(fds)) die("pipe: %s", strerror(errno));
    uint64_t p2 = picks[2].addr;
    missing += !resident(p2);
    uint8_t stamp[300];
    for (size_t i = 0; i < sizeof stamp; i++) stamp[i] = (uint8_t)(i * 7 + g_seed);
    if (write(fds[1], stamp, sizeof stamp) != (ssize_t)sizeof stamp) die("write to pipe: %s", strerror(errno));
    patch_add(p2, 1000, stamp, sizeof stamp);
    ssize_t got = read(fds[0], (void *)(p2 + 1000), sizeof stamp);
    if (got != (ssize_t)sizeof stamp) {
        snprintf(note, sizeof note, "read=%zd errno=%s", got, got < 0 ? strerror(errno) : "0");
        kernel_fault_fail("read-into", p2, note);
        extra++;
    }

    /* 4. write(2) from a missing page into a pipe: the bytes the kernel read must be the image's. */
    uint64_t p3 = picks[3].addr;
    missing += !resident(p3);
    ssize_t put = write(fds[1], (const void *)p3, LP_PAGE);
    uint8_t back[LP_PAGE];
    ssize_t in = put == (ssize_t)LP_PAGE ? read(fds[0], back, LP_PAGE) : -1;
    if (in != (ssize_t)LP_PAGE || memcmp(back, image_bytes(picks[3].exp), LP_PAGE)) {
        snprintf(note, sizeof note, "write=%zd read_back=%zd %s", put, in,
                 in == (ssize_t)LP_PAGE ? "bytes differ from the image" : strerror(errno));
        kernel_fault_fail("write-from", p3, note);
        extra++;
    }
    close(fds[0]);
    close(fds[1]);

    verify_all(2);
    char details[96];
    snprintf(details, sizeof details, "kernel_faults=4 missing_before=%d", missing);
    return finish(extra, NULL, details);
}
