/*
 * lp-workload: one restored task of a simulated `criu restore --lazy-pages`.
 *
 * Usage: lp-workload PLAN SCENARIO SEED      (fd 3: a unix stream socket to the simulator)
 *
 * It maps the task's memory at its image addresses, fills the eager pages itself, creates a uffd exactly as CRIU's
 * restorer does, registers every lazy VMA, hands the uffd to the simulator over fd 3 and then runs SCENARIO while
 * the lazy-pages daemon delivers the rest, checking every byte it is responsible for against the image.
 *
 * ---- Plan file (text, one directive per line; '#' starts a comment; numbers are decimal or 0x-hex) ----------
 *
 *   task  VPID                        the virtual pid (names the task in every report line)
 *   file  INDEX PATH                  a pages file, mmapped read-only (INDEX 0, 1, ... in order; PATH is the
 *                                     rest of the line)
 *   vma   START END PROT FLAGS        a VMA of the image ([START, END), page-aligned)
 *   lazy  ADDR NPAGES INDEX OFFSET    pages the daemon delivers; their data is at OFFSET in file INDEX
 *   lazy  ADDR NPAGES remote          pages the daemon delivers from a page server (touched, not compared)
 *   eager ADDR NPAGES INDEX OFFSET    pages the restorer (we) fills before registering
 *
 * Every run lies inside one VMA. A VMA holding a lazy or eager run is mapped anonymous private read-write at its
 * address with MAP_FIXED_NOREPLACE (PROT/FLAGS are informational); one holding a lazy run is then registered
 * MISSING, whole. VMAs without runs are not mapped. A VMA that collides with our own mappings is left out with a
 * "WARN" line on stderr (the daemon still sees it in the images; its copies there are refused by the kernel).
 * Pages of a mapped VMA that no run covers must read as zeros.
 *
 * ---- Output ----------------------------------------------------------------------------------------------------
 * stdout carries result lines, each written with one write(2):
 *   OK   task=V pid=P scenario=S seed=N pages=K [details]        the process (and the children it folds in) passed
 *   FAIL task=V pid=P scenario=S seed=N addr=0x.. byte=I expected=0x.. got=0x.. source=...   one bad page
 *   FAIL task=V pid=P scenario=S seed=N pages=K failures=F ...   summary of a failing process
 * Exit status: 0 only if every checked byte matched (and every child folded in passed); 1 on a mismatch; 2 on a
 * setup error. Random choices come from SEED (mixed with the vpid, and per child) and are printed for replay.
 * The scenarios are described in scenarios.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "CDescriptorPassing.h"

#include "workload.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

struct plan g_plan;
struct model g_model;
const char *g_scenario = "?";
uint64_t g_seed;
int g_control_fd = 3;

static void emit(int fd, const char *prefix, const char *fmt, va_list ap) {
    char buf[2048];
    int n = snprintf(buf, sizeof buf, "%s", prefix);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    if (m < 0) m = 0;
    n += m;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        off += w;
    }
}

void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(1, "", fmt, ap);
    va_end(ap);
}

void warn_line(const char *fmt, ...) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "WARN task=%d pid=%d: ", g_plan.vpid, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    emit(2, prefix, fmt, ap);
    va_end(ap);
}

void die(const char *fmt, ...) {
    char prefix[160];
    snprintf(prefix, sizeof prefix, "FAIL task=%d pid=%d scenario=%s seed=%llu setup: ", g_plan.vpid, (int)getpid(),
             g_scenario, (unsigned long long)g_seed);
    va_list ap;
    va_start(ap, fmt);
    emit(1, prefix, fmt, ap);
    va_end(ap);
    _exit(2);
}

/* Maps the VMAs that hold runs (before anything else is mapped, to keep their addresses free). */
static void map_vmas(void) {
    for (int i = 0; i < g_plan.nvmas; i++) {
        struct plan_vma *v = &g_plan.vmas[i];
        if (!v->has_lazy && !v->has_eager) continue;
        size_t len = v->end - v->start;
        void *p = mmap((void *)v->start, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
        if (p == MAP_FAILED || p != (void *)v->start) {
            if (p != MAP_FAILED) munmap(p, len); /* a kernel without NOREPLACE placed it elsewhere */
            warn_line("vma 0x%llx-0x%llx collides with our own mappings (%s); left out",
                      (unsigned long long)v->start, (unsigned long long)v->end,
                      p == MAP_FAILED ? strerror(errno) : "placed elsewhere");
            continue;
        }
        v->mapped = 1;
        model_add(&g_model, v->start, len / LP_PAGE, EXP_ZERO);
    }
}

/* Fills the eager runs and records what every mapped page must read as. */
static void fill_eager(void) {
    for (int i = 0; i < g_plan.nruns; i++) {
        struct plan_run *r = &g_plan.runs[i];
        int mapped = 0;
        for (int j = 0; j < g_plan.nvmas; j++)
            if (g_plan.vmas[j].mapped && r->addr >= g_plan.vmas[j].start && r->addr < g_plan.vmas[j].end) mapped = 1;
        if (!mapped) continue;
        for (uint64_t k = 0; k < r->npages; k++) {
            uint64_t exp = r->file < 0 ? EXP_ANY : EXP_FILE(r->file, r->offset / LP_PAGE + k);
            model_set(&g_model, r->addr + k * LP_PAGE, exp);
        }
        if (r->eager) {
            if (r->file < 0) die("eager run at 0x%llx has no file data", (unsigned long long)r->addr);
            const struct pages_file *f = &g_plan.files[r->file];
            memcpy((void *)r->addr, f->map + r->offset, r->npages * LP_PAGE);
        }
    }
}

/* Creates the uffd like CRIU's uffd_open(): ask what the kernel offers on a scratch descriptor, then open the real
 * one and negotiate the wanted events among those. */
static int open_uffd(void) {
    const uint64_t wanted = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP |
                            UFFD_FEATURE_EVENT_REMOVE;
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) die("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API (probe): %s", strerror(errno));
    uint64_t features = api.features & wanted;
    close(fd);
    fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) die("userfaultfd: %s", strerror(errno));
    api = (struct uffdio_api){.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API: %s", strerror(errno));
    if (features != wanted) warn_line("kernel lacks some uffd events: got 0x%llx of 0x%llx", (unsigned long long)features,
                                      (unsigned long long)wanted);
    return fd;
}

static void register_lazy(int uffd) {
    for (int i = 0; i < g_plan.nvmas; i++) {
        struct plan_vma *v = &g_plan.vmas[i];
        if (!v->mapped || !v->has_lazy) continue;
        struct uffdio_register reg = {.range = {.start = v->start, .len = v->end - v->start},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(uffd, UFFDIO_REGISTER, &reg))
            die("UFFDIO_REGISTER 0x%llx-0x%llx: %s", (unsigned long long)v->start, (unsigned long long)v->end,
                strerror(errno));
    }
}

static void send_uffd(int uffd) {
    char byte = 0;
    ssize_t n = lp_send_with_fds(g_control_fd, &byte, 1, &uffd, 1);
    if (n != 1) die("sending the uffd over fd %d: %s", g_control_fd, n < 0 ? strerror(errno) : "short write");
}

/* Tests of memory limits: the workload (not the simulator that started it) enters this cgroup (v1: the
 * cgroup.procs file of the directory) before mapping anything. */
static void join_cgroup(const char *directory) {
    if (!directory || !*directory) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/cgroup.procs", directory);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
        fprintf(stderr, "lp-workload: cannot join the cgroup %s: %s\n", directory, strerror(errno));
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PLAN SCENARIO SEED   (fd 3: socket to the simulator)\n", argv[0]);
        return 2;
    }
    g_scenario = argv[2];
    g_seed = strtoull(argv[3], NULL, 0);
    join_cgroup(getenv("LP_WORKLOAD_CGROUP"));
    plan_read(argv[1], &g_plan);
    map_vmas();
    plan_open_files(&g_plan);
    fill_eager();
    int uffd = open_uffd();
    register_lazy(uffd);
    send_uffd(uffd);
    close(uffd);
    return run_scenario(g_scenario);
}
