/*
 * lp-workload: the scenarios. Each checks every page it is responsible for, byte for byte, against the expectation
 * model (image data, or zeros where nothing was dumped or where the process itself dropped the data):
 *
 *   verify          every tracked page, in random order.
 *   idle            blocks until the simulator writes a byte on fd 3 ("go"), then every page: checks the daemon's
 *                   background fill of a process that never faulted.
 *   fork-storm      one child checks every page (random order) while the parent keeps forking 24 short-lived
 *                   children that check 32 random pages each (every 4th forks a grandchild that checks 16 more) and
 *                   itself touches a fresh slice of pages between forks; the parent ends having checked every page
 *                   and folds in every child's exit status.
 *   mremap-move     touches a quarter of the largest region, moves its middle third elsewhere (MREMAP_FIXED) and the
 *                   whole second-largest region too; then every page at its new address.
 *   mremap-grow     grows the largest region twice with MREMAP_MAYMOVE: first with a guard page after it (so it
 *                   must move), then, after moving it where there is room, in place (the kernel extends the
 *                   registered VMA); data is kept, each grown tail reads zeros; then every page.
 *   mremap-shrink   shrinks the largest region to half in place (an UNMAP for the tail), maps the freed tail again
 *                   as plain memory (must read zeros: nothing may be copied there); then every page.
 *   mremap-swap     swaps two equal-size regions with three mremap(MREMAP_MAYMOVE|MREMAP_FIXED) through a spare
 *                   address, touching pages between the steps; then every page.
 *   madvise         MADV_DONTNEED on 6 random sub-ranges (half of them touched before): they read zeros afterwards,
 *                   the rest keeps image data; then every page.
 *   munmap-partial  unmaps the middle third of the largest region and the first pages of the second, maps the holes
 *                   again as plain memory (zeros); then every page.
 *   threads         8 threads released together by a barrier fault the same 64 pages, then each its own share of
 *                   the rest (every 8th page), in random order.
 *   exit-mid        checks 8 random pages and exits 0 while the daemon still has pages to deliver.
 *   threads16       as threads, with 16 threads (every 16th page each).
 *   forward-read    reads the top quarter of its pages in address order (a scan far from where the fill starts),
 *                   then every other page at random: the fill should jump ahead of a forward reader.
 * The reliability scenarios (uffd-events, fork2-storm, fork-exit-early, lazy-thp, many-vmas, sparse-huge,
 * kernel-faults) are described in reliability_scenarios.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

struct rng rng_for(uint64_t salt) {
    return (struct rng){g_seed ^ ((uint64_t)g_plan.vpid * 0x100000001B3ULL) ^ (salt * 0xD6E8FEB86659FD93ULL)};
}

/* Prints the summary line of this process (OK or FAIL) and returns its exit status. */
int finish(uint64_t extra_failures, const char *role, const char *details) {
    int ok = failed_pages() == 0 && extra_failures == 0;
    say("%s task=%d pid=%d scenario=%s seed=%llu pages=%llu failures=%llu%s%s%s%s", ok ? "OK" : "FAIL", g_plan.vpid,
        (int)getpid(), g_scenario, (unsigned long long)g_seed, (unsigned long long)verified_pages(),
        (unsigned long long)(failed_pages() + extra_failures), role ? " role=" : "", role ? role : "",
        details && *details ? " " : "", details ? details : "");
    return ok ? 0 : 1;
}

int verify_all(uint64_t salt) {
    struct rng r = rng_for(salt);
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    shuffle(&r, all, n);
    verify_list(all, n);
    free(all);
    return (int)n;
}

/* Checks `count` random pages of the given address range (pages not tracked are skipped). */
void touch_some(struct rng *r, uint64_t addr, uint64_t npages, uint64_t count) {
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n); /* address order */
    for (uint64_t i = 0; i < count && npages; i++) {
        uint64_t a = addr + rng_below(r, npages) * LP_PAGE;
        size_t lo = 0, hi = n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (all[mid].addr < a) lo = mid + 1;
            else hi = mid;
        }
        if (lo < n && all[lo].addr == a) verify_page(a, all[lo].exp);
    }
    free(all);
}

void *reserve(uint64_t len) {
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("reserving %llu bytes: %s", (unsigned long long)len, strerror(errno));
    return p;
}

uint64_t move_fixed(uint64_t from, uint64_t len, uint64_t to) {
    void *p = mremap((void *)from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)to);
    if (p == MAP_FAILED)
        die("mremap 0x%llx+0x%llx -> 0x%llx: %s", (unsigned long long)from, (unsigned long long)len,
            (unsigned long long)to, strerror(errno));
    model_move(&g_model, from, len, to);
    return (uint64_t)p;
}

/* Maps [addr, addr+len) again as plain (unregistered) memory and tracks it as zeros. */
static void remap_plain(uint64_t addr, uint64_t len) {
    void *p = mmap((void *)addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)addr) {
        if (p != MAP_FAILED) munmap(p, len);
        warn_line("could not map the freed range 0x%llx+0x%llx again", (unsigned long long)addr,
                  (unsigned long long)len);
        return;
    }
    model_add(&g_model, addr, len / LP_PAGE, EXP_ZERO);
}

struct segment *need_largest(uint64_t min_pages) {
    struct segment *s = model_largest(&g_model, NULL);
    if (!s || s->npages < min_pages) die("scenario %s needs a region of at least %llu pages", g_scenario,
                                         (unsigned long long)min_pages);
    return s;
}

/* ---- scenarios ------------------------------------------------------------------------------------------------ */

static int scenario_verify(void) {
    verify_all(1);
    return finish(0, NULL, "");
}

static int scenario_forward_read(void) {
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n); /* address order */
    size_t from = n - n / 4;
    verify_list(all + from, n - from);
    struct rng r = rng_for(1);
    shuffle(&r, all, from);
    verify_list(all, from);
    free(all);
    return finish(0, NULL, "");
}

static int scenario_idle(void) {
    char go;
    ssize_t n;
    do n = read(g_control_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n < 0) warn_line("reading go from fd %d: %s", g_control_fd, strerror(errno));
    verify_all(1);
    return finish(0, NULL, n == 1 ? "released=go" : "released=eof");
}

int wait_children(const pid_t *pids, int n) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int status;
        pid_t w;
        do w = waitpid(pids[i], &status, 0);
        while (w < 0 && errno == EINTR);
        if (w < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed++;
            say("FAIL task=%d pid=%d scenario=%s seed=%llu child=%d %s=%d", g_plan.vpid, (int)getpid(), g_scenario,
                (unsigned long long)g_seed, (int)pids[i], w >= 0 && WIFSIGNALED(status) ? "signal" : "status",
                w < 0 ? -1 : WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        }
    }
    return failed;
}

void check_random(struct rng *r, const struct page_ref *all, size_t n, int count) {
    for (int k = 0; k < count && n; k++) {
        const struct page_ref *p = &all[rng_below(r, n)];
        verify_page(p->addr, p->exp);
    }
}

static int scenario_fork_storm(void) {
    enum { SHORT_CHILDREN = 24 };
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    pid_t pids[SHORT_CHILDREN + 1];
    int np = 0;
    pid_t full = fork();
    if (full < 0) die("fork: %s", strerror(errno));
    if (full == 0) {
        verify_reset_counters();
        struct rng r = rng_for(1000);
        shuffle(&r, all, n);
        verify_list(all, n);
        _exit(finish(0, "full-child", ""));
    }
    pids[np++] = full;
    struct rng r = rng_for(1);
    shuffle(&r, all, n);
    size_t step = n / (SHORT_CHILDREN + 1) + 1, done = 0;
    for (int i = 0; i < SHORT_CHILDREN; i++) {
        size_t k = done + step <= n ? step : n - done;
        verify_list(all + done, k);
        done += k;
        pid_t c = fork();
        if (c < 0) die("fork: %s", strerror(errno));
        if (c == 0) {
            verify_reset_counters();
            struct rng cr = rng_for(2000 + (uint64_t)i);
            pid_t grandchild = -1;
            if (i % 4 == 0) {
                grandchild = fork();
                if (grandchild == 0) {
                    verify_reset_counters();
                    struct rng gr = rng_for(3000 + (uint64_t)i);
                    check_random(&gr, all, n, 16);
                    _exit(failed_pages() ? finish(0, "grandchild", "") : 0);
                }
            }
            check_random(&cr, all, n, 32);
            int bad = grandchild > 0 ? wait_children(&grandchild, 1) : grandchild == 0 ? 0 : (i % 4 == 0);
            _exit(failed_pages() || bad ? finish((uint64_t)bad, "short-child", "") : 0);
        }
        pids[np++] = c;
    }
    verify_list(all + done, n - done);
    free(all);
    int failed = wait_children(pids, np);
    char details[64];
    snprintf(details, sizeof details, "children=%d failed_children=%d", np, failed);
    return finish((uint64_t)failed, NULL, details);
}

static int scenario_mremap_move(void) {
    struct rng r = rng_for(1);
    struct segment *s = need_largest(3);
    uint64_t addr = s->addr, npages = s->npages;
    touch_some(&r, addr, npages, npages / 4 + 1);
    uint64_t third = npages / 3, from = addr + third * LP_PAGE, len = third * LP_PAGE;
    uint64_t to = move_fixed(from, len, (uint64_t)reserve(len));
    char details[256];
    int off = snprintf(details, sizeof details, "moved=0x%llx+%llu->0x%llx", (unsigned long long)from,
                       (unsigned long long)third, (unsigned long long)to);
    /* the second-largest region of the original layout: anything not inside the one we just split */
    struct segment *second = NULL;
    for (size_t i = 0; i < g_model.n; i++) {
        struct segment *c = &g_model.segs[i];
        if (c->addr >= addr && c->addr < addr + npages * LP_PAGE) continue;
        if (c->addr == to) continue;
        if (!second || c->npages > second->npages) second = c;
    }
    if (second) {
        uint64_t a = second->addr, l = second->npages * LP_PAGE;
        touch_some(&r, a, second->npages, second->npages / 4 + 1);
        uint64_t t = move_fixed(a, l, (uint64_t)reserve(l));
        snprintf(details + off, sizeof details - (size_t)off, " moved=0x%llx+%llu->0x%llx", (unsigned long long)a,
                 (unsigned long long)(l / LP_PAGE), (unsigned long long)t);
    }
    verify_all(2);
    return finish(0, NULL, details);
}

uint64_t grow(uint64_t addr, uint64_t len, uint64_t extra) {
    void *p = mremap((void *)addr, len, len + extra, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        die("mremap grow 0x%llx+0x%llx by 0x%llx: %s", (unsigned long long)addr, (unsigned long long)len,
            (unsigned long long)extra, strerror(errno));
    model_move(&g_model, addr, len, (uint64_t)p);
    model_add(&g_model, (uint64_t)p + len, extra / LP_PAGE, EXP_ZERO);
    return (uint64_t)p;
}

static int scenario_mremap_grow(void) {
    struct rng r = rng_for(1);
    struct segment *s = need_largest(1);
    uint64_t addr = s->addr, npages = s->npages, len = npages * LP_PAGE;
    uint64_t extra = (npages / 2 > 4 ? npages / 2 : 4) * LP_PAGE;
    touch_some(&r, addr, npages, npages / 4 + 1);
    void *guard = mmap((void *)(addr + len), LP_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
    uint64_t first = grow(addr, len, extra);
    if (guard != MAP_FAILED) munmap(guard, LP_PAGE);
    touch_some(&r, first, (len + extra) / LP_PAGE, (len + extra) / LP_PAGE / 4 + 1);
    /* Make room after the region (move it to the start of a reservation, free the reservation's tail), so the
     * second grow can happen in place: the kernel then extends the registered VMA itself. */
    uint64_t room = (uint64_t)reserve(len + 2 * extra);
    uint64_t placed = move_fixed(first, len + extra, room);
    munmap((void *)(placed + len + extra), extra);
    uint64_t second = grow(placed, len + extra, extra);
    verify_all(2);
    char details[256];
    snprintf(details, sizeof details, "grew=0x%llx+%llu->0x%llx+%llu(%s) moved=0x%llx->0x%llx grew=0x%llx+%llu(%s)",
             (unsigned long long)addr, (unsigned long long)npages, (unsigned long long)first,
             (unsigned long long)((len + extra) / LP_PAGE), first == addr ? "in-place" : "moved",
             (unsigned long long)first, (unsigned long long)placed, (unsigned long long)second,
             (unsigned long long)((len + 2 * extra) / LP_PAGE), second == placed ? "in-place" : "moved");
    return finish(0, NULL, details);
}

static int scenario_mremap_shrink(void) {
    struct rng r = rng_for(1);
    struct segment *s = need_largest(2);
    uint64_t addr = s->addr, npages = s->npages, keep = npages - npages / 2;
    touch_some(&r, addr, npages, npages / 4 + 1);
    void *p = mremap((void *)addr, npages * LP_PAGE, keep * LP_PAGE, 0);
    if (p != (void *)addr) die("mremap shrink 0x%llx: %s", (unsigned long long)addr, strerror(errno));
    model_remove(&g_model, addr + keep * LP_PAGE, (npages - keep) * LP_PAGE);
    remap_plain(addr + keep * LP_PAGE, (npages - keep) * LP_PAGE);
    verify_all(2);
    char details[128];
    snprintf(details, sizeof details, "shrunk=0x%llx+%llu->%llu", (unsigned long long)addr,
             (unsigned long long)npages, (unsigned long long)keep);
    return finish(0, NULL, details);
}

static int scenario_mremap_swap(void) {
    struct rng r = rng_for(1);
    struct segment *s = need_largest(2);
    struct segment *t = model_largest(&g_model, s);
    uint64_t a, b, pages;
    if (t && t->npages >= 1) {
        pages = s->npages < t->npages ? s->npages : t->npages;
        a = s->addr;
        b = t->addr;
    } else {
        pages = s->npages / 2;
        a = s->addr;
        b = s->addr + pages * LP_PAGE;
    }
    uint64_t len = pages * LP_PAGE;
    touch_some(&r, a, pages, pages / 4 + 1);
    touch_some(&r, b, pages, pages / 4 + 1);
    uint64_t spare = move_fixed(a, len, (uint64_t)reserve(len));
    touch_some(&r, spare, pages, pages / 8 + 1);
    touch_some(&r, b, pages, pages / 8 + 1);
    move_fixed(b, len, a);
    touch_some(&r, a, pages, pages / 8 + 1);
    move_fixed(spare, len, b);
    verify_all(2);
    char details[128];
    snprintf(details, sizeof details, "swapped=0x%llx<->0x%llx pages=%llu via=0x%llx", (unsigned long long)a,
             (unsigned long long)b, (unsigned long long)pages, (unsigned long long)spare);
    return finish(0, NULL, details);
}

static int scenario_madvise(void) {
    struct rng r = rng_for(1);
    char details[512] = "";
    size_t off = 0;
    for (int i = 0; i < 6 && g_model.n; i++) {
        struct segment *s = &g_model.segs[rng_below(&r, g_model.n)];
        uint64_t max = s->npages < 16 ? s->npages : 16;
        uint64_t pages = 1 + rng_below(&r, max);
        uint64_t start = s->addr + rng_below(&r, s->npages - pages + 1) * LP_PAGE;
        int touched = i % 2 == 0;
        if (touched) touch_some(&r, start, pages, pages);
        if (madvise((void *)start, pages * LP_PAGE, MADV_DONTNEED))
            die("madvise 0x%llx: %s", (unsigned long long)start, strerror(errno));
        model_zero(&g_model, start, pages * LP_PAGE);
        if (off < sizeof details)
            off += (size_t)snprintf(details + off, sizeof details - off, "%sdontneed=0x%llx+%llu%s", i ? " " : "",
                                    (unsigned long long)start, (unsigned long long)pages, touched ? "(touched)" : "");
    }
    verify_all(2);
    return finish(0, NULL, details);
}

static int scenario_munmap_partial(void) {
    struct rng r = rng_for(1);
    struct segment *s = need_largest(3);
    struct segment *t = model_largest(&g_model, s);
    uint64_t addr = s->addr, npages = s->npages, third = npages / 3;
    uint64_t t_addr = t ? t->addr : 0, t_pages = t ? t->npages : 0;
    touch_some(&r, addr, npages, npages / 4 + 1);
    if (t) touch_some(&r, t_addr, t_pages, t_pages / 4 + 1);
    uint64_t hole = addr + third * LP_PAGE, hole_len = third * LP_PAGE;
    if (munmap((void *)hole, hole_len)) die("munmap 0x%llx: %s", (unsigned long long)hole, strerror(errno));
    model_remove(&g_model, hole, hole_len);
    char details[256];
    int off = snprintf(details, sizeof details, "unmapped=0x%llx+%llu", (unsigned long long)hole,
                       (unsigned long long)third);
    uint64_t head_len = 0;
    if (t) {
        head_len = (t_pages > 1 ? t_pages / 2 : 1) * LP_PAGE;
        if (munmap((void *)t_addr, head_len)) die("munmap 0x%llx: %s", (unsigned long long)t_addr, strerror(errno));
        model_remove(&g_model, t_addr, head_len);
        snprintf(details + off, sizeof details - (size_t)off, " unmapped=0x%llx+%llu", (unsigned long long)t_addr,
                 (unsigned long long)(head_len / LP_PAGE));
    }
    remap_plain(hole, hole_len);
    if (t) remap_plain(t_addr, head_len);
    verify_all(2);
    return finish(0, NULL, details);
}

struct thread_work {
    int index, count;
    pthread_barrier_t *barrier;
    const struct page_ref *all;
    size_t n, shared;
};

static void *thread_main(void *arg) {
    struct thread_work *w = arg;
    struct rng r = rng_for(100 + (uint64_t)w->index);
    size_t mine = 0;
    struct page_ref *list = malloc((w->n ? w->n : 1) * sizeof *list);
    if (!list) die("out of memory");
    for (size_t i = 0; i < w->shared; i++) list[mine++] = w->all[i];
    shuffle(&r, list, mine);
    size_t own = mine;
    for (size_t i = w->shared; i < w->n; i++)
        if (i % (size_t)w->count == (size_t)w->index) list[own++] = w->all[i];
    shuffle(&r, list + mine, own - mine);
    pthread_barrier_wait(w->barrier);
    verify_list(list, own);
    free(list);
    return NULL;
}

static int run_threads(int threads) {
    enum { MAX_THREADS = 64 };
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    pthread_t tid[MAX_THREADS];
    struct thread_work work[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        work[i] = (struct thread_work){i, threads, &barrier, all, n, n < 64 ? n : 64};
        int e = pthread_create(&tid[i], NULL, thread_main, &work[i]);
        if (e) die("pthread_create: %s", strerror(e));
    }
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
    free(all);
    char details[32];
    snprintf(details, sizeof details, "threads=%d", threads);
    return finish(0, NULL, details);
}

static int scenario_threads(void) { return run_threads(8); }
static int scenario_threads16(void) { return run_threads(16); }

static int scenario_exit_mid(void) {
    struct rng r = rng_for(1);
    size_t n;
    struct page_ref *all = model_flatten(&g_model, &n);
    shuffle(&r, all, n);
    verify_list(all, n < 8 ? n : 8);
    free(all);
    char details[64];
    snprintf(details, sizeof details, "of=%zu", n);
    return finish(0, NULL, details);
}

int run_scenario(const char *name) {
    static const struct {
        const char *name;
        int (*run)(void);
    } table[] = {
        {"verify", scenario_verify},
        {"idle", scenario_idle},
        {"forward-read", scenario_forward_read},
        {"fork-storm", scenario_fork_storm},
        {"mremap-move", scenario_mremap_move},
        {"mremap-grow", scenario_mremap_grow},
        {"mremap-shrink", scenario_mremap_shrink},
        {"mremap-swap", scenario_mremap_swap},
        {"madvise", scenario_madvise},
        {"munmap-partial", scenario_munmap_partial},
        {"threads", scenario_threads},
        {"exit-mid", scenario_exit_mid},
        {"threads16", scenario_threads16},
        {"uffd-events", scenario_uffd_events},
        {"fork2-storm", scenario_fork2_storm},
        {"fork-exit-early", scenario_fork_exit_early},
        {"lazy-thp", scenario_lazy_thp},
        {"many-vmas", scenario_many_vmas},
        {"sparse-huge", scenario_sparse_huge},
        {"kernel-faults", scenario_kernel_faults},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name)) return table[i].run();
    die("unknown scenario '%s'", name);
}
