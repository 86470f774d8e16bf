/*
 * lp-bench-workload: the restored task `lazy-pages bench` runs through RestoreSimulator when it must time faults
 * in the faulting process (lp-workload checks every byte, which would distort the timings).
 *
 * Usage: lp-bench-workload PLAN SCENARIO SEED      (fd 3: a unix stream socket to the simulator)
 *
 * It reads lp-workload's plan format (see Sources/lp-workload/main.c), maps every VMA holding a run at its address,
 * fills eager runs itself, creates its uffd like CRIU's restorer (EVENT_FORK|REMAP|UNMAP|REMOVE, O_NONBLOCK),
 * registers the VMAs holding lazy runs MISSING, hands the uffd over fd 3 and runs SCENARIO:
 *
 *   touch   touches $LP_BENCH_TOUCHES (default: all) distinct lazy pages in random order; before each touch
 *           mincore(2) says whether the page is already home; the first touch of a page that was not is timed
 *           with clock_gettime(CLOCK_MONOTONIC) and counted as a fault taken.
 *   idle    blocks until the simulator writes a byte on fd 3 (sent after the daemon exited), then reads every
 *           lazy page (no faults are expected: the daemon filled them all).
 *
 * Every touched page's first and last words are checked against the pages file after the timed loop. With
 * $LP_BENCH_LATENCIES set, one fault latency (ns) per line is written there. The result line on stdout:
 *   OK task=V pid=P scenario=S touches=N faults=F seconds=T wrong=0
 * Exit status: 0 when every checked page was right, 1 on a wrong page, 2 on a setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "CDescriptorPassing.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE 4096UL
#define CONTROL_FD 3

static int g_vpid;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "FAIL task=%d pid=%d setup: ", g_vpid, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(1, buf, (size_t)n) < 0) _exit(2);
    _exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct vma { uint64_t start, end; int lazy, any; };
struct run { uint64_t addr, npages, offset; int file, eager; };
struct file { char *path; const uint8_t *map; size_t size; };

static struct vma *vmas;
static int nvmas;
static struct run *runs;
static int nruns;
static struct file *files;
static int nfiles;

#define GROW(arr, n) ((arr) = realloc((arr), sizeof(*(arr)) * (size_t)((n) + 1)))

static void read_plan(const char *path) {
    FILE *f = fopen(path, "re");
    if (!f) die("cannot open plan %s: %s", path, strerror(errno));
    char line[4200];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!strncmp(line, "file ", 5)) {
            char *end;
            strtol(line + 5, &end, 10);
            while (*end == ' ') end++;
            GROW(files, nfiles);
            files[nfiles++] = (struct file){.path = strdup(end)};
            continue;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char kind[16];
        unsigned long long a, b, c = 0, d = 0;
        char word[32] = "";
        if (sscanf(line, "task %llu", &a) == 1) {
            g_vpid = (int)a;
        } else if (sscanf(line, "vma %llx %llx", &a, &b) == 2) {
            GROW(vmas, nvmas);
            vmas[nvmas++] = (struct vma){.start = a, .end = b};
        } else if (sscanf(line, "%15s %llx %llu %31s %llx", kind, &a, &b, word, &d) >= 4 &&
                   (!strcmp(kind, "lazy") || !strcmp(kind, "eager"))) {
            if (!strcmp(word, "remote")) die("remote pages are not supported by the bench workload");
            c = strtoull(word, NULL, 0);
            GROW(runs, nruns);
            runs[nruns++] = (struct run){.addr = a, .npages = b, .file = (int)c, .offset = d, .eager = kind[0] == 'e'};
        }
    }
    fclose(f);
    for (int i = 0; i < nruns; i++) {
        if (runs[i].file >= nfiles) die("run at 0x%llx names an unknown file", (unsigned long long)runs[i].addr);
        for (int j = 0; j < nvmas; j++)
            if (runs[i].addr >= vmas[j].start && runs[i].addr < vmas[j].end) {
                vmas[j].any = 1;
                if (!runs[i].eager) vmas[j].lazy = 1;
            }
    }
}

static void map_everything(void) {
    for (int i = 0; i < nvmas; i++) {
        if (!vmas[i].any) continue;
        size_t len = vmas[i].end - vmas[i].start;
        void *p = mmap((void *)vmas[i].start, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
        if (p != (void *)vmas[i].start) die("cannot map vma 0x%llx: %s", (unsigned long long)vmas[i].start, strerror(errno));
    }
    for (int i = 0; i < nfiles; i++) {
        int fd = open(files[i].path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die("open %s: %s", files[i].path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st)) die("fstat %s: %s", files[i].path, strerror(errno));
        files[i].size = (size_t)st.st_size;
        if (files[i].size) {
            void *p = mmap(NULL, files[i].size, PROT_READ, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) die("mmap %s: %s", files[i].path, strerror(errno));
            files[i].map = p;
        }
        close(fd);
    }
    for (int i = 0; i < nruns; i++)
        if (runs[i].eager) memcpy((void *)runs[i].addr, files[runs[i].file].map + runs[i].offset, runs[i].npages * PAGE);
}

static int open_uffd(void) {
    const uint64_t wanted = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP |
                            UFFD_FEATURE_EVENT_REMOVE;
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) die("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = wanted};
    if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API: %s", strerror(errno));
    for (int i = 0; i < nvmas; i++) {
        if (!vmas[i].lazy) continue;
        struct uffdio_register reg = {.range = {.start = vmas[i].start, .len = vmas[i].end - vmas[i].start},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(fd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER: %s", strerror(errno));
    }
    return fd;
}

static void send_uffd(int uffd) {
    char byte = 0;
    if (lp_send_with_fds(CONTROL_FD, &byte, 1, &uffd, 1) != 1) die("sending the uffd: %s", strerror(errno));
}

/* Every lazy page: its address and where its data is. */
struct page { uint64_t addr; const uint8_t *data; };

static struct page *lazy_pages(size_t *count) {
    size_t n = 0;
    for (int i = 0; i < nruns; i++) if (!runs[i].eager) n += runs[i].npages;
    struct page *all = malloc((n ? n : 1) * sizeof *all);
    if (!all) die("out of memory");
    size_t k = 0;
    for (int i = 0; i < nruns; i++) {
        if (runs[i].eager) continue;
        for (uint64_t p = 0; p < runs[i].npages; p++)
            all[k++] = (struct page){runs[i].addr + p * PAGE, files[runs[i].file].map + runs[i].offset + p * PAGE};
    }
    *count = n;
    return all;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int wrong_page(const struct page *p) {
    const uint64_t *got = (const uint64_t *)p->addr, *want = (const uint64_t *)p->data;
    return got[0] != want[0] || got[PAGE / 8 - 1] != want[PAGE / 8 - 1];
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PLAN SCENARIO SEED   (fd 3: socket to the simulator)\n", argv[0]);
        return 2;
    }
    const char *scenario = argv[2];
    uint64_t seed = strtoull(argv[3], NULL, 0);
    read_plan(argv[1]);
    map_everything();
    size_t n;
    struct page *pages = lazy_pages(&n);
    const char *env = getenv("LP_BENCH_TOUCHES");
    size_t touches = env && strtoull(env, NULL, 0) ? (size_t)strtoull(env, NULL, 0) : n;
    if (touches > n) touches = n;
    /* Pick the touched pages before the hand-over so nothing but touching happens while the daemon serves. */
    uint64_t s = (seed ^ (uint64_t)g_vpid * 0x100000001B3ULL) * 0x9E3779B97F4A7C15ULL | 1;
    for (size_t i = 0; i < touches; i++) {
        size_t j = i + (size_t)(rng_next(&s) % (n - i));
        struct page t = pages[i];
        pages[i] = pages[j];
        pages[j] = t;
    }
    uint64_t *lat = malloc((touches ? touches : 1) * sizeof *lat);
    if (!lat) die("out of memory");
    memset(lat, 0, (touches ? touches : 1) * sizeof *lat); /* fault the buffer in before timing */

    int uffd = open_uffd();
    send_uffd(uffd);
    close(uffd);

    size_t faults = 0, wrong = 0;
    uint64_t t0 = now_ns();
    if (!strcmp(scenario, "touch")) {
        for (size_t i = 0; i < touches; i++) {
            unsigned char resident = 0;
            mincore((void *)pages[i].addr, PAGE, &resident);
            volatile const uint64_t *p = (volatile const uint64_t *)pages[i].addr;
            uint64_t a = now_ns();
            (void)*p;
            uint64_t b = now_ns();
            if (!(resident & 1)) lat[faults++] = b - a;
        }
    } else if (!strcmp(scenario, "idle")) {
        char go;
        ssize_t r;
        do r = read(CONTROL_FD, &go, 1);
        while (r < 0 && errno == EINTR);
        t0 = now_ns();
        touches = n;
        for (size_t i = 0; i < n; i++) {
            unsigned char resident = 0;
            mincore((void *)pages[i].addr, PAGE, &resident);
            if (!(resident & 1)) faults++;
        }
    } else {
        die("unknown scenario %s", scenario);
    }
    uint64_t t1 = now_ns();
    for (size_t i = 0; i < touches; i++) wrong += (size_t)wrong_page(&pages[i]);

    const char *out = getenv("LP_BENCH_LATENCIES");
    if (out && *out) {
        FILE *f = fopen(out, "we");
        if (!f) die("cannot write %s: %s", out, strerror(errno));
        for (size_t i = 0; i < faults; i++) fprintf(f, "%llu\n", (unsigned long long)lat[i]);
        fclose(f);
    }
    printf("%s task=%d pid=%d scenario=%s touches=%zu faults=%zu seconds=%.6f wrong=%zu\n", wrong ? "FAIL" : "OK",
           g_vpid, (int)getpid(), scenario, touches, faults, (double)(t1 - t0) / 1e9, wrong);
    return wrong ? 1 : 0;
}
