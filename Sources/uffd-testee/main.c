/*
 * uffd-testee: the faulting party for the Userfaultfd tests.
 *
 * Usage: uffd-testee SOCKFD PAGES
 *
 * SOCKFD is an inherited SOCK_SEQPACKET socket to the test. The testee makes its own uffd (O_CLOEXEC|O_NONBLOCK,
 * UFFDIO_API with EVENT_FORK|REMAP|REMOVE|UNMAP|THREAD_ID), maps PAGES private anonymous pages, registers them
 * MISSING and sends one message "ready ADDR PAGES PAGESIZE PID" (hex ADDR, decimal rest) carrying the uffd as
 * SCM_RIGHTS. It then closes its own copy of the uffd and runs one command per message from the test:
 *
 *   touch K            read page K (faults if missing)       -> "page K\n" + the page's bytes
 *   fork [K...]        fork; the child reads each page K      -> parent: "forked CHILDPID\n"
 *                      and reports it, then exits 0              child:  "child K\n" + bytes, per page
 *   wait               waitpid() for any child                -> "waited PID STATUS\n" (raw wait status)
 *   mremap             move the whole region elsewhere        -> "remapped NEWADDR\n" (hex)
 *   dontneed K N       madvise(MADV_DONTNEED) pages [K, K+N)  -> "dontneed K N\n"
 *   unmap K N          munmap pages [K, K+N)                  -> "unmapped K N\n"
 *   exit CODE          _exit(CODE), no reply
 *
 * Every call that raises a non-cooperative event (fork, mremap, madvise, munmap) blocks until the test has read
 * that event, so a reply proves the event was consumed. Errors are reported as "error WHAT ERRNO\n" and end the
 * testee with status 2. Nothing here sleeps to synchronize: the socket drives every step. The only timeouts are
 * safety nets: a command not arriving within 30 s, or the whole run exceeding 120 s (alarm), end the testee.
 * If the test process dies, its uffd and socket close: a waiting fault is released and the next recv sees EOF.
 * (No PR_SET_PDEATHSIG: it fires when the spawning *thread* exits, and test threads come and go.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "CDescriptorPassing.h"

enum { COMMAND_TIMEOUT_MS = 30000, RUN_TIMEOUT_S = 120, MAX_MESSAGE = 256 };

static int sock = -1;
static char *region;
static size_t pages;
static size_t page_size;

/* Sends a text header plus an optional binary payload as one SOCK_SEQPACKET message. */
static void reply(const char *header, const void *payload, size_t payload_len) {
    size_t header_len = strlen(header);
    char *message = malloc(header_len + payload_len);
    if (!message) _exit(3);
    memcpy(message, header, header_len);
    if (payload_len) memcpy(message + header_len, payload, payload_len);
    ssize_t sent;
    do {
        sent = send(sock, message, header_len + payload_len, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    free(message);
    if (sent < 0) _exit(4);
}

static void fail(const char *what) {
    char line[MAX_MESSAGE];
    snprintf(line, sizeof line, "error %s %d\n", what, errno);
    reply(line, NULL, 0);
    _exit(2);
}

/* Copies page `k` out of the region (this read is what faults) and sends it with `tag`. */
static void report_page(const char *tag, size_t k) {
    if (k >= pages) {
        errno = ERANGE;
        fail("page-index");
    }
    unsigned char *copy = malloc(page_size);
    if (!copy) _exit(3);
    const volatile unsigned char *page = (const volatile unsigned char *)(region + k * page_size);
    for (size_t i = 0; i < page_size; i++) copy[i] = page[i];
    char header[MAX_MESSAGE];
    snprintf(header, sizeof header, "%s %zu\n", tag, k);
    reply(header, copy, page_size);
    free(copy);
}

static int make_uffd(void) {
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail("userfaultfd");
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |
                    UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID,
    };
    if (ioctl(fd, UFFDIO_API, &api) != 0) fail("UFFDIO_API");
    return fd;
}

static void send_ready(int uffd) {
    char line[MAX_MESSAGE];
    snprintf(line, sizeof line, "ready %lx %zu %zu %d\n", (unsigned long)region, pages, page_size, (int)getpid());
    if (lp_send_with_fds(sock, line, strlen(line), &uffd, 1) < 0) fail("sendmsg");
}

/* Waits for the next command; returns its length (0 when the test hung up). */
static size_t next_command(char *buffer, size_t size) {
    struct pollfd pfd = {.fd = sock, .events = POLLIN};
    int ready;
    do {
        ready = poll(&pfd, 1, COMMAND_TIMEOUT_MS);
    } while (ready < 0 && errno == EINTR);
    if (ready == 0) _exit(5); /* safety net: the test is gone or stuck */
    if (ready < 0) fail("poll");
    ssize_t n;
    do {
        n = recv(sock, buffer, size - 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) fail("recv");
    buffer[n] = '\0';
    return (size_t)n;
}

static void do_fork(const char *args) {
    size_t wanted[64];
    size_t count = 0;
    const char *p = args;
    char *end;
    for (;;) {
        unsigned long k = strtoul(p, &end, 10);
        if (end == p || count == 64) break;
        wanted[count++] = k;
        p = end;
    }
    pid_t child = fork(); /* blocks until the test has read the fork event */
    if (child < 0) fail("fork");
    if (child == 0) {
        for (size_t i = 0; i < count; i++) report_page("child", wanted[i]);
        _exit(0);
    }
    char line[MAX_MESSAGE];
    snprintf(line, sizeof line, "forked %d\n", (int)child);
    reply(line, NULL, 0);
}

static void do_mremap(void) {
    size_t length = pages * page_size;
    /* Reserve a destination so the move is forced and lands at a known, different address. */
    void *target = mmap(NULL, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (target == MAP_FAILED) fail("mmap-target");
    void *moved = mremap(region, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    if (moved == MAP_FAILED) fail("mremap");
    region = moved;
    char line[MAX_MESSAGE];
    snprintf(line, sizeof line, "remapped %lx\n", (unsigned long)region);
    reply(line, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: uffd-testee SOCKFD PAGES\n");
        return 64;
    }
    sock = atoi(argv[1]);
    pages = strtoul(argv[2], NULL, 10);
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    alarm(RUN_TIMEOUT_S);
    if (pages == 0 || pages > 4096) {
        errno = EINVAL;
        fail("pages");
    }

    int uffd = make_uffd();
    region = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) fail("mmap");
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)region, .len = pages * page_size},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) fail("UFFDIO_REGISTER");
    send_ready(uffd);
    close(uffd); /* the test's copy keeps the context alive */

    char command[MAX_MESSAGE];
    for (;;) {
        if (next_command(command, sizeof command) == 0) return 0;
        unsigned long a = 0, b = 0;
        char line[MAX_MESSAGE];
        if (sscanf(command, "touch %lu", &a) == 1) {
            report_page("page", a);
        } else if (strncmp(command, "fork", 4) == 0) {
            do_fork(command + 4);
        } else if (strncmp(command, "wait", 4) == 0) {
            int status = 0;
            pid_t pid;
            do {
                pid = waitpid(-1, &status, 0);
            } while (pid < 0 && errno == EINTR);
            if (pid < 0) fail("waitpid");
            snprintf(line, sizeof line, "waited %d %d\n", (int)pid, status);
            reply(line, NULL, 0);
        } else if (strncmp(command, "mremap", 6) == 0) {
            do_mremap();
        } else if (sscanf(command, "dontneed %lu %lu", &a, &b) == 2) {
            if (madvise(region + a * page_size, b * page_size, MADV_DONTNEED) != 0) fail("madvise");
            snprintf(line, sizeof line, "dontneed %lu %lu\n", a, b);
            reply(line, NULL, 0);
        } else if (sscanf(command, "unmap %lu %lu", &a, &b) == 2) {
            if (munmap(region + a * page_size, b * page_size) != 0) fail("munmap");
            snprintf(line, sizeof line, "unmapped %lu %lu\n", a, b);
            reply(line, NULL, 0);
        } else if (sscanf(command, "exit %lu", &a) == 1) {
            _exit((int)a);
        } else {
            errno = EINVAL;
            fail("command");
        }
    }
}
