/*
 * fc-emulator: does what Firecracker does when it resumes a snapshot with a UFFD memory backend, then acts as the
 * guest and checks every byte it reads against the snapshot memory file.
 *
 * Usage: fc-emulator --socket PATH --mem-file FILE --region 4k:BYTES|2m:BYTES [--region ...]
 *                    [--handshake MODE] [--balloon R:OFFSET:LENGTH ...] [--threads N] [--wait] [--progress N]
 *
 * Firecracker's side: create a uffd (non-blocking, close-on-exec) with UFFD_FEATURE_EVENT_REMOVE (plus
 * MISSING_HUGETLBFS for 2 MiB regions), mmap every guest region (private anonymous; 2m regions MAP_HUGETLB with
 * 2 MiB pages), register each MISSING, connect to PATH and send ONE sendmsg: the JSON array of
 * {"base_host_virt_addr","size","offset","page_size","page_size_kib"} and the uffd as SCM_RIGHTS. Regions are laid
 * out one after the other in the memory file from offset 0 (each offset aligned to its page size).
 *
 * MODE (default normal) sends a deliberately bad handshake instead: malformed (cut-off JSON), overlap (region 1
 * starts inside region 0), outside (region 0 offset past the end of the file), misaligned (region 0 size one
 * byte short), no-fd, two-fds (the uffd twice), not-uffd (an eventfd instead of the uffd). After a bad handshake
 * the emulator waits (a handler must kill it or close the socket); on end of file it prints
 * "REFUSED socket closed" and exits 3.
 *
 * --wait: after the handshake print "READY pid=P" and wait for a line on stdin before touching guest memory.
 *
 * The guest: for each --balloon R:OFFSET:LENGTH (region R, page-aligned bytes), touch the range's first page, then
 * madvise(MADV_DONTNEED) the range (a balloon inflation: the handler gets UFFD_EVENT_REMOVE). Then N threads read
 * every page of every region, in an interleaved order, and compare it with the file (ballooned ranges: zeros).
 * Finally the ballooned ranges are written and read back (the guest reuses the memory).
 *
 * --progress N: while the threads read, print "PROGRESS pieces=K" each time K, the 4 KiB pieces checked so far by
 * all threads together, reaches a multiple of N (a test waits for it to act in the middle of the guest's reads).
 *
 * Output (stdout, one write per line): "OK regions=R bytes=B zero_bytes=Z threads=N" and exit 0; "FAIL region=R
 * addr=0x.. byte=I expected=0x.. got=0x.." per bad page (first 16) and a "FAIL ... failures=F" summary, exit 1;
 * "FAIL setup: ..." and exit 2 on a setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "CDescriptorPassing.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

#define MAX_REGIONS 16
#define MAX_BALLOONS 16
#define HUGE (2u << 20)

struct region {
    size_t page;   /* 4096 or 2 MiB */
    size_t size;
    size_t offset; /* in the memory file */
    uint8_t *addr;
};

struct balloon {
    int region;
    size_t offset, length;
};

static struct region g_regions[MAX_REGIONS];
static int g_nregions;
static struct balloon g_balloons[MAX_BALLOONS];
static int g_nballoons;
static const uint8_t *g_file;
static size_t g_file_size;
static int g_threads = 1;
static size_t g_progress;
static size_t g_checked;
static int g_failures;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(1, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        off += w;
    }
}

#define die(...)                                                                                                     \
    do {                                                                                                             \
        char m_[512];                                                                                                \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                                         \
        say("FAIL setup: %s", m_);                                                                                   \
        _exit(2);                                                                                                    \
    } while (0)

static int in_balloon(int r, size_t off) {
    for (int b = 0; b < g_nballoons; b++)
        if (g_balloons[b].region == r && off >= g_balloons[b].offset && off < g_balloons[b].offset + g_balloons[b].length)
            return 1;
    return 0;
}

/* Checks one 4 KiB piece of region r at byte offset off against the file (or zeros). */
static void check_piece(int r, size_t off) {
    static const uint8_t zeros[4096];
    struct region *g = &g_regions[r];
    const uint8_t *want = in_balloon(r, off) ? zeros : g_file + g->offset + off;
    const uint8_t *got = g->addr + off;
    volatile uint8_t first = got[0]; /* fault the guest page in before reading the file, as a guest would */
    (void)first;
    if (g_progress) {
        size_t checked = __atomic_add_fetch(&g_checked, 1, __ATOMIC_RELAXED);
        if (checked % g_progress == 0) say("PROGRESS pieces=%zu", checked);
    }
    if (memcmp(got, want, 4096) == 0) return;
    for (int i = 0; i < 4096; i++) {
        if (got[i] != want[i]) {
            pthread_mutex_lock(&g_lock);
            if (g_failures++ < 16)
                say("FAIL region=%d addr=%p byte=%d expected=0x%02x got=0x%02x source=%s", r, (void *)(got + i), i,
                    want[i], got[i], want == zeros ? "zero" : "file");
            pthread_mutex_unlock(&g_lock);
            return;
        }
    }
}

/* Thread t of N checks the guest pages p with p % N == t, walking each region from both ends towards the middle
 * so that faults land out of order and on several vCPUs at once. */
static void *vcpu(void *arg) {
    long t = (long)arg;
    for (int r = 0; r < g_nregions; r++) {
        struct region *g = &g_regions[r];
        size_t pages = g->size / g->page;
        for (size_t k = 0; k < pages; k++) {
            size_t p = (k % 2 == 0) ? k / 2 : pages - 1 - k / 2;
            if ((long)(p % (size_t)g_threads) != t) continue;
            for (size_t piece = 0; piece < g->page; piece += 4096) check_piece(r, p * g->page + piece);
        }
    }
    return NULL;
}

static size_t parse_size(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (*end == 'K' || *end == 'k') v <<= 10;
    else if (*end == 'M' || *end == 'm') v <<= 20;
    return (size_t)v;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL, *mem_file = NULL, *mode = "normal";
    int wait_stdin = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--socket") && v) socket_path = argv[++i];
        else if (!strcmp(a, "--mem-file") && v) mem_file = argv[++i];
        else if (!strcmp(a, "--handshake") && v) mode = argv[++i];
        else if (!strcmp(a, "--threads") && v) g_threads = atoi(argv[++i]);
        else if (!strcmp(a, "--wait")) wait_stdin = 1;
        else if (!strcmp(a, "--progress") && v) g_progress = (size_t)strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--region") && v && g_nregions < MAX_REGIONS) {
            i++;
            struct region *g = &g_regions[g_nregions++];
            if (!strncmp(v, "4k:", 3)) g->page = 4096;
            else if (!strncmp(v, "2m:", 3)) g->page = HUGE;
            else die("bad --region %s (4k:BYTES or 2m:BYTES)", v);
            g->size = parse_size(v + 3);
            if (g->size == 0 || g->size % g->page) die("--region %s: size must be a positive multiple of the page", v);
        } else if (!strcmp(a, "--balloon") && v && g_nballoons < MAX_BALLOONS) {
            i++;
            struct balloon *b = &g_balloons[g_nballoons++];
            char off[64], len[64];
            if (sscanf(v, "%d:%63[^:]:%63s", &b->region, off, len) != 3) die("bad --balloon %s (R:OFFSET:LENGTH)", v);
            b->offset = parse_size(off);
            b->length = parse_size(len);
        } else die("unknown or incomplete argument %s", a);
    }
    if (!socket_path || !mem_file || g_nregions == 0) die("need --socket, --mem-file and at least one --region");
    if (g_threads < 1 || g_threads > 64) die("--threads must be 1..64");

    int need_huge = 0;
    size_t cursor = 0;
    for (int r = 0; r < g_nregions; r++) {
        struct region *g = &g_regions[r];
        cursor = (cursor + g->page - 1) & ~(g->page - 1);
        g->offset = cursor;
        cursor += g->size;
        if (g->page == HUGE) need_huge = 1;
    }
    for (int b = 0; b < g_nballoons; b++) {
        struct balloon *bl = &g_balloons[b];
        if (bl->region < 0 || bl->region >= g_nregions) die("--balloon names region %d of %d", bl->region, g_nregions);
        struct region *g = &g_regions[bl->region];
        if (bl->offset % g->page || bl->length % g->page || bl->length == 0 || bl->offset + bl->length > g->size)
            die("--balloon %d:%zu:%zu is not whole pages inside the region", bl->region, bl->offset, bl->length);
    }

    int mfd = open(mem_file, O_RDONLY | O_CLOEXEC);
    if (mfd < 0) die("open %s: %s", mem_file, strerror(errno));
    struct stat st;
    if (fstat(mfd, &st) != 0) die("fstat: %s", strerror(errno));
    g_file_size = (size_t)st.st_size;
    if (cursor > g_file_size) die("the regions need %zu bytes; %s has %zu", cursor, mem_file, g_file_size);
    g_file = mmap(NULL, g_file_size, PROT_READ, MAP_PRIVATE, mfd, 0);
    if (g_file == MAP_FAILED) die("mmap %s: %s", mem_file, strerror(errno));
    close(mfd);

    /* Firecracker's side: uffd, guest memory, registration. */
    int uffd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) die("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
    if (need_huge) api.features |= UFFD_FEATURE_MISSING_HUGETLBFS;
    if (ioctl(uffd, UFFDIO_API, &api) != 0) die("UFFDIO_API: %s", strerror(errno));
    for (int r = 0; r < g_nregions; r++) {
        struct region *g = &g_regions[r];
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
        if (g->page == HUGE) flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB;
        void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (p == MAP_FAILED) die("mmap region %d (%zu bytes, page %zu): %s", r, g->size, g->page, strerror(errno));
        g->addr = p;
        struct uffdio_register reg = {.range = {.start = (uintptr_t)p, .len = g->size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) die("UFFDIO_REGISTER region %d: %s", r, strerror(errno));
    }

    /* The one message. */
    char json[8192];
    size_t n = 0;
    n += (size_t)snprintf(json + n, sizeof json - n, "[");
    for (int r = 0; r < g_nregions; r++) {
        struct region *g = &g_regions[r];
        uintptr_t base = (uintptr_t)g->addr;
        size_t size = g->size, offset = g->offset;
        if (!strcmp(mode, "overlap") && r == 1) base = (uintptr_t)g_regions[0].addr + g_regions[0].page;
        if (!strcmp(mode, "outside") && r == 0) offset = (g_file_size + g->page) & ~(g->page - 1);
        if (!strcmp(mode, "misaligned") && r == 0) size -= 1;
        n += (size_t)snprintf(json + n, sizeof json - n,
                              "%s{\"base_host_virt_addr\":%llu,\"size\":%zu,\"offset\":%zu,\"page_size\":%zu,"
                              "\"page_size_kib\":%zu}",
                              r ? "," : "", (unsigned long long)base, size, offset, g->page, g->page);
    }
    n += (size_t)snprintf(json + n, sizeof json - n, "]");
    if (n >= sizeof json) die("too many regions for the message buffer");
    if (!strcmp(mode, "malformed")) n = n / 2;
    if (!strcmp(mode, "overlap") && g_nregions < 2) die("--handshake overlap needs two regions");

    int fds[2] = {uffd, uffd};
    int nfds = 1;
    if (!strcmp(mode, "no-fd")) nfds = 0;
    else if (!strcmp(mode, "two-fds")) nfds = 2;
    else if (!strcmp(mode, "not-uffd")) {
        fds[0] = eventfd(0, EFD_CLOEXEC);
        if (fds[0] < 0) die("eventfd: %s", strerror(errno));
    } else if (strcmp(mode, "normal") && strcmp(mode, "malformed") && strcmp(mode, "overlap") &&
               strcmp(mode, "outside") && strcmp(mode, "misaligned"))
        die("unknown --handshake %s", mode);

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof sa.sun_path) die("socket path too long");
    strcpy(sa.sun_path, socket_path);
    if (connect(sock, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect %s: %s", socket_path, strerror(errno));

    if (lp_send_with_fds(sock, json, n, fds, nfds) != (ssize_t)n) die("sendmsg: %s", strerror(errno));

    if (strcmp(mode, "normal")) {
        /* A bad handshake: a handler must refuse it (kill us or close the socket), never serve us. */
        char byte;
        ssize_t r;
        while ((r = read(sock, &byte, 1)) < 0 && errno == EINTR) {
        }
        say("REFUSED socket closed");
        _exit(3);
    }
    /* Firecracker keeps its end open; so do we. */

    if (wait_stdin) {
        say("READY pid=%d", (int)getpid());
        char line[16];
        while (read(0, line, sizeof line) < 0 && errno == EINTR) {
        }
    }

    /* The guest: inflate the balloon (first page present, the rest never touched), then read everything. */
    size_t zero_bytes = 0;
    for (int b = 0; b < g_nballoons; b++) {
        struct balloon *bl = &g_balloons[b];
        struct region *g = &g_regions[bl->region];
        volatile uint8_t touch = g->addr[bl->offset];
        (void)touch;
        if (madvise(g->addr + bl->offset, bl->length, MADV_DONTNEED) != 0)
            die("madvise(MADV_DONTNEED) region %d [%zu, +%zu): %s", bl->region, bl->offset, bl->length, strerror(errno));
        zero_bytes += bl->length;
    }
    pthread_t threads[64];
    for (long t = 0; t < g_threads; t++)
        if (pthread_create(&threads[t], NULL, vcpu, (void *)t) != 0) die("pthread_create");
    for (int t = 0; t < g_threads; t++) pthread_join(threads[t], NULL);

    /* The guest reuses the deflated memory. */
    for (int b = 0; b < g_nballoons; b++) {
        struct balloon *bl = &g_balloons[b];
        uint8_t *p = g_regions[bl->region].addr + bl->offset;
        memset(p, 0xA5, bl->length);
        for (size_t i = 0; i < bl->length; i++)
            if (p[i] != 0xA5) {
                g_failures++;
                say("FAIL region=%d addr=%p reuse of ballooned memory reads 0x%02x", bl->region, (void *)(p + i), p[i]);
                break;
            }
    }

    size_t bytes = 0;
    for (int r = 0; r < g_nregions; r++) bytes += g_regions[r].size;
    if (g_failures) {
        say("FAIL regions=%d bytes=%zu failures=%d", g_nregions, bytes, g_failures);
        return 1;
    }
    say("OK regions=%d bytes=%zu zero_bytes=%zu threads=%d", g_nregions, bytes, zero_bytes, g_threads);
    return 0;
}
