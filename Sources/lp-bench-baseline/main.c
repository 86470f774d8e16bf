/*
 * lp-bench-baseline: the two reference points `lazy-pages bench` compares lazy-pagesd against, measured on the
 * same pages file in the same run.
 *
 *   lp-bench-baseline ceiling PAGESFILE CHUNK_KIB REPEATS [THREADS]
 *       The fastest any monitor could fill: a forked child maps an anonymous private region the size of PAGESFILE,
 *       registers it MISSING on a uffd it made and hands the uffd over a socketpair; the parent maps PAGESFILE
 *       read-only (MAP_SHARED, like the daemon) and runs a plain loop of UFFDIO_COPY of CHUNK_KIB over the whole
 *       region — with THREADS (default 1) threads, each over its own contiguous slice. Repeated REPEATS times (the
 *       child drops its pages with MADV_DONTNEED between passes, the parent maps the file afresh). One JSON line
 *       per pass.
 *
 *   lp-bench-baseline floor PAGESFILE TOUCHES SEED LATENCYFILE [spin]
 *       The lowest fault latency any monitor could give: the child (same setup) touches TOUCHES distinct pages in
 *       random order and times each first touch with clock_gettime(CLOCK_MONOTONIC); the parent is a minimal
 *       handler: poll, read one message, one 4 KiB UFFDIO_COPY from the mapped file. With `spin`, the handler
 *       never sleeps: it reads the (non-blocking) uffd in a loop, so no wake-up stands between a fault and its
 *       answer (and one CPU is busy all along). The child checks the first word of every touched page against the
 *       file, writes one latency (ns) per line to LATENCYFILE, and exits non-zero on a mismatch. One JSON line.
 *
 * Exit status 0 on success; 1 on a wrong page; 2 on a setup error (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#include <stdarg.h>

#include "CDescriptorPassing.h"
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lp-bench-baseline: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    _exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct pages_file {
    const uint8_t *map;
    size_t size;
};

static struct pages_file map_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) die("fstat %s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size & ~(PAGE - 1);
    if (size == 0) die("%s holds no whole page", path);
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap %s: %s", path, strerror(errno));
    close(fd);
    return (struct pages_file){p, size};
}

static size_t file_size(const char *path) {
    struct stat st;
    if (stat(path, &st)) die("stat %s: %s", path, strerror(errno));
    return (size_t)st.st_size & ~(PAGE - 1);
}

/* ---- the child: a region registered MISSING, its uffd handed to the parent -------------------------------- */

struct handover {
    uint64_t region;
    uint64_t length;
};

static void send_fd(int sock, int fd, const struct handover *h) {
    if (lp_send_with_fds(sock, h, sizeof *h, &fd, 1) != (ssize_t)sizeof *h) die("sendmsg: %s", strerror(errno));
}

static int receive_fd(int sock, struct handover *h) {
    struct iovec iov = {.iov_base = h, .iov_len = sizeof *h};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof *h) die("recvmsg: %s", n < 0 ? strerror(errno) : "short read (child failed?)");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) die("no descriptor from the child");
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

/* Maps the region, makes a uffd (no events: nothing but missing faults) and registers the region. */
static uint8_t *child_setup(int sock, size_t length) {
    uint8_t *region = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) die("child mmap: %s", strerror(errno));
    int uffd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) die("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API: %s", strerror(errno));
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)region, .len = length},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER: %s", strerror(errno));
    struct handover h = {(uint64_t)(uintptr_t)region, length};
    send_fd(sock, uffd, &h);
    close(uffd);
    return region;
}

static char read_byte(int sock) {
    char c = 0;
    ssize_t n;
    do n = read(sock, &c, 1);
    while (n < 0 && errno == EINTR);
    return n == 1 ? c : 0;
}

static void write_byte(int sock, char c) {
    ssize_t n;
    do n = write(sock, &c, 1);
    while (n < 0 && errno == EINTR);
}

static pid_t start_child(int *parent_sock, void (*body)(int sock, size_t length, void *arg), size_t length, void *arg) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair)) die("socketpair: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(pair[0]);
        body(pair[1], length, arg);
        _exit(0);
    }
    close(pair[1]);
    *parent_sock = pair[0];
    return pid;
}

static int reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid: %s", strerror(errno));
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- ceiling ---------------------------------------------------------------------------------------------- */

/* Child of the ceiling: holds the registered region; 'r' drops its pages, 'q' (or EOF) ends it. */
static void ceiling_child(int sock, size_t length, void *arg) {
    (void)arg;
    uint8_t *region = child_setup(sock, length);
    for (;;) {
        char c = read_byte(sock);
        if (c == 'r') {
            if (madvise(region, length, MADV_DONTNEED)) die("madvise: %s", strerror(errno));
            write_byte(sock, 'k');
        } else {
            return;
        }
    }
}

struct copy_slice {
    int uffd;
    uint64_t dst;
    const uint8_t *src;
    size_t length, chunk;
    uint64_t eagain;
};

/* One thread's share of a pass: UFFDIO_COPY of `chunk` over [dst, dst + length). */
static void *copy_slice(void *arg) {
    struct copy_slice *s = arg;
    for (size_t off = 0; off < s->length;) {
        size_t len = s->length - off < s->chunk ? s->length - off : s->chunk;
        struct uffdio_copy c = {.dst = s->dst + off, .src = (uint64_t)(uintptr_t)(s->src + off), .len = len, .mode = 0, .copy = 0};
        if (ioctl(s->uffd, UFFDIO_COPY, &c)) {
            if (errno == EAGAIN && c.copy > 0) {
                off += (size_t)c.copy;
                s->eagain++;
                continue;
            }
            if (errno == EAGAIN) { s->eagain++; continue; }
            die("UFFDIO_COPY at +0x%zx: %s", off, strerror(errno));
        }
        off += len;
    }
    return NULL;
}

static int run_ceiling(const char *path, size_t chunk, int repeats, int threads) {
    size_t length = file_size(path);
    int sock;
    pid_t child = start_child(&sock, ceiling_child, length, NULL);
    struct handover h;
    int uffd = receive_fd(sock, &h);
    for (int pass = 0; pass < repeats; pass++) {
        if (pass > 0) {
            write_byte(sock, 'r');
            if (read_byte(sock) != 'k') die("the child did not drop its pages");
        }
        struct pages_file f = map_file(path);
        struct copy_slice slices[64];
        pthread_t ids[64];
        size_t share = (length / PAGE + (size_t)threads - 1) / (size_t)threads * PAGE;
        uint64_t t0 = now_ns();
        for (int t = 0; t < threads; t++) {
            size_t start = (size_t)t * share < length ? (size_t)t * share : length;
            size_t end = start + share < length ? start + share : length;
            slices[t] = (struct copy_slice){uffd, h.region + start, f.map + start, end - start, chunk, 0};
            if (t > 0 && pthread_create(&ids[t], NULL, copy_slice, &slices[t])) die("pthread_create failed");
        }
        copy_slice(&slices[0]);
        uint64_t eagain = slices[0].eagain;
        for (int t = 1; t < threads; t++) {
            pthread_join(ids[t], NULL);
            eagain += slices[t].eagain;
        }
        uint64_t t1 = now_ns();
        munmap((void *)f.map, f.size);
        double seconds = (double)(t1 - t0) / 1e9;
        printf("{\"mode\":\"ceiling\",\"threads\":%d,\"chunk_bytes\":%zu,\"pass\":%d,\"bytes\":%zu,\"seconds\":%.6f,\"gib_per_s\":%.4f,\"partial\":%llu}\n",
               threads, chunk, pass, length, seconds, (double)length / seconds / (double)(1ULL << 30), (unsigned long long)eagain);
        fflush(stdout);
    }
    write_byte(sock, 'q');
    close(uffd);
    close(sock);
    return reap(child) == 0 ? 0 : 2;
}

/* ---- floor ------------------------------------------------------------------------------------------------ */

struct floor_args {
    const char *path;
    size_t touches;
    uint64_t seed;
    const char *latency_path;
    int spin;
};

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Child of the floor: waits for 'g', touches pages in random order timing each first touch, checks them. */
static void floor_child(int sock, size_t length, void *arg) {
    struct floor_args *a = arg;
    uint8_t *region = child_setup(sock, length);
    size_t pages = length / PAGE;
    size_t touches = a->touches < pages ? a->touches : pages;
    uint32_t *order = malloc(pages * sizeof *order);
    uint64_t *lat = malloc(touches * sizeof *lat);
    uint64_t *seen = malloc(touches * sizeof *seen);
    if (!order || !lat || !seen) die("out of memory");
    for (size_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
    uint64_t s = a->seed * 0x9E3779B97F4A7C15ULL | 1;
    for (size_t i = 0; i < touches; i++) {
        size_t j = i + (size_t)(rng_next(&s) % (pages - i));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    if (read_byte(sock) != 'g') _exit(2);
    for (size_t i = 0; i < touches; i++) {
        volatile uint64_t *p = (volatile uint64_t *)(region + (size_t)order[i] * PAGE);
        uint64_t t0 = now_ns();
        uint64_t v = *p;
        uint64_t t1 = now_ns();
        lat[i] = t1 - t0;
        seen[i] = v;
    }
    /* Checked after the timed loop so the file's page cache is not touched while timing. */
    struct pages_file f = map_file(a->path);
    size_t wrong = 0;
    for (size_t i = 0; i < touches; i++)
        if (seen[i] != *(const uint64_t *)(f.map + (size_t)order[i] * PAGE)) wrong++;
    FILE *out = fopen(a->latency_path, "we");
    if (!out) die("cannot write %s: %s", a->latency_path, strerror(errno));
    for (size_t i = 0; i < touches; i++) fprintf(out, "%llu\n", (unsigned long long)lat[i]);
    fclose(out);
    if (wrong) {
        fprintf(stderr, "lp-bench-baseline: floor: %zu of %zu pages read wrong\n", wrong, touches);
        _exit(1);
    }
}

static int run_floor(struct floor_args *a) {
    size_t length = file_size(a->path);
    int sock;
    pid_t child = start_child(&sock, floor_child, length, a);
    struct handover h;
    int uffd = receive_fd(sock, &h);
    struct pages_file f = map_file(a->path);
    write_byte(sock, 'g');
    uint64_t served = 0;
    struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (a->spin) fds[0].revents = POLLIN; /* read at once, sleep never; EAGAIN when nothing is queued */
        int n = a->spin ? poll(fds + 1, 1, 0) : poll(fds, 2, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("poll: %s", strerror(errno));
        }
        if (fds[0].revents & POLLIN) {
            struct uffd_msg msg;
            ssize_t r = read(uffd, &msg, sizeof msg);
            if (r == (ssize_t)sizeof msg && msg.event == UFFD_EVENT_PAGEFAULT) {
                uint64_t page = msg.arg.pagefault.address & ~(PAGE - 1);
                struct uffdio_copy c = {.dst = page, .src = (uint64_t)(uintptr_t)(f.map + (page - h.region)), .len = PAGE};
                if (ioctl(uffd, UFFDIO_COPY, &c) && errno != EEXIST) die("UFFDIO_COPY: %s", strerror(errno));
                served++;
            } else if (r < 0 && errno != EAGAIN) {
                die("read uffd: %s", strerror(errno));
            }
        }
        if (fds[1].revents) break; /* the child closed its end: it is done */
    }
    int status = reap(child);
    printf("{\"mode\":\"%s\",\"touches\":%zu,\"faults_served\":%llu,\"status\":%d}\n", a->spin ? "floor-spin" : "floor", a->touches,
           (unsigned long long)served, status);
    return status;
}

int main(int argc, char **argv) {
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "ceiling")) {
        size_t chunk = (size_t)strtoull(argv[3], NULL, 0) * 1024;
        int repeats = atoi(argv[4]);
        int threads = argc == 6 ? atoi(argv[5]) : 1;
        if (chunk == 0 || chunk % PAGE || repeats < 1) die("bad chunk size or repeat count");
        if (threads < 1 || threads > 64) die("THREADS must be 1 to 64");
        return run_ceiling(argv[2], chunk, repeats, threads);
    }
    if ((argc == 6 || (argc == 7 && !strcmp(argv[6], "spin"))) && !strcmp(argv[1], "floor")) {
        struct floor_args a = {argv[2], (size_t)strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0), argv[5], argc == 7};
        if (a.touches == 0) die("TOUCHES must be positive");
        return run_floor(&a);
    }
    fprintf(stderr,
            "usage: %s ceiling PAGESFILE CHUNK_KIB REPEATS [THREADS]\n"
            "       %s floor PAGESFILE TOUCHES SEED LATENCYFILE [spin]\n",
            argv[0], argv[0]);
    return 2;
}
