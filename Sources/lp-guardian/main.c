/*
 * lp-guardian: makes the death of lazy-pagesd loud instead of silent.
 *
 * When the last descriptor of a uffd is closed, the kernel unregisters its ranges and wakes every thread waiting
 * in it: they then read fresh zero pages and run on with wrong memory. lazy-pagesd starts one guardian per
 * restore (posix_spawn, socketpair on fd 3, SOCK_SEQPACKET) and sends it a duplicate of every uffd it adopts,
 * with what it knows of the process. The guardian only waits. If the socket reaches end of file without a DONE
 * message — the daemon died or gave up with the restore in flight — and it still holds a uffd, it SIGKILLs every
 * process of the restore (everything it recorded, and the descendants of the recorded restorer pids, found by
 * walking /proc/PID/task/TID/children, parents before children), waits for them to be gone, and only then closes
 * its uffd copies (holding them is what keeps the blocked threads from being handed zero pages meanwhile).
 *
 * Messages (struct guardian_msg, 16 bytes, one per packet):
 *   RESTORER pid          the pid on the other end of the lazy-pages socket (SO_PEERCRED)
 *   ADD id image_pid      + one uffd (SCM_RIGHTS): a task handed over its uffd
 *   FORK id parent_id     + one uffd: a forked child's uffd (UFFD_EVENT_FORK)
 *   RETIRE id             the daemon is done with that process (complete or exited): close its copy
 *   DONE                  the restore ended cleanly: close everything, exit 0
 * Each ADD/FORK also snapshots the restorers' descendants (pid + start time), so a process the restorer has
 * let go of by the time of the daemon's death is still found. Start times guard against reused pids.
 *
 * Exit status: 0 after DONE or when nothing was in flight; 3 after killing the restore's processes; 2 on a
 * setup error. Every action is reported on stderr as "lp-guardian: ...".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum { MSG_RESTORER = 1, MSG_ADD = 2, MSG_FORK = 3, MSG_RETIRE = 4, MSG_DONE = 5 };

struct guardian_msg {
    uint32_t kind;
    int32_t id;
    int32_t a; /* RESTORER: pid; ADD: image pid; FORK: parent id */
    int32_t b; /* reserved */
};

struct held {
    int id, fd;
};

struct known {
    pid_t pid;
    unsigned long long start;
};

static struct held *helds;
static size_t nhelds, cap_helds;
static struct known *procs;
static size_t nprocs, cap_procs;
static pid_t *restorers;
static size_t nrestorers, cap_restorers;
static pid_t self, daemon_pid;

#define GROW(arr, n, cap)                                                                                             \
    do {                                                                                                              \
        if ((n) == (cap)) {                                                                                           \
            (cap) = (cap) ? (cap) * 2 : 64;                                                                           \
            (arr) = realloc((arr), (cap) * sizeof *(arr));                                                            \
            if (!(arr)) {                                                                                             \
                fprintf(stderr, "lp-guardian: out of memory\n");                                                      \
                exit(2);                                                                                              \
            }                                                                                                         \
        }                                                                                                             \
    } while (0)

/* Field 22 of /proc/PID/stat (start time in clock ticks), or 0 when the process is gone. */
static unsigned long long start_time(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    /* after ")": field 3 (state) ... field 22 */
    unsigned long long v = 0;
    int field = 2;
    for (char *t = strtok(p + 1, " "); t; t = strtok(NULL, " "))
        if (++field == 22) {
            v = strtoull(t, NULL, 10);
            break;
        }
    return v;
}

static int is_zombie_or_gone(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return !p || p[1] == 0 || p[2] == 'Z' || p[2] == 'X';
}

static int recorded(pid_t pid) {
    for (size_t i = 0; i < nprocs; i++)
        if (procs[i].pid == pid) return 1;
    return 0;
}

static void record(pid_t pid) {
    if (pid == self || pid == daemon_pid || pid <= 1 || recorded(pid)) return;
    unsigned long long st = start_time(pid);
    if (!st) return;
    GROW(procs, nprocs, cap_procs);
    procs[nprocs++] = (struct known){pid, st};
}

/* Calls fn on every descendant of pid, parents before children. */
static void walk_children(pid_t pid, void (*fn)(pid_t), int depth) {
    if (depth > 64) return;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char cpath[128];
        snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", (int)pid, e->d_name);
        FILE *f = fopen(cpath, "re");
        if (!f) continue;
        int child;
        pid_t kids[4096];
        int nk = 0;
        while (nk < 4096 && fscanf(f, "%d", &child) == 1) kids[nk++] = child;
        fclose(f);
        for (int i = 0; i < nk; i++) {
            if (kids[i] == self) continue;
            fn(kids[i]);
            walk_children(kids[i], fn, depth + 1);
        }
    }
    closedir(d);
}

static void snapshot(void) {
    for (size_t i = 0; i < nrestorers; i++) walk_children(restorers[i], record, 0);
}

static pid_t *killed;
static size_t nkilled, cap_killed;

static void kill_one(pid_t pid) {
    if (pid == self || pid == daemon_pid || pid <= 1) return;
    for (size_t i = 0; i < nkilled; i++)
        if (killed[i] == pid) return;
    if (kill(pid, SIGKILL) == 0) {
        GROW(killed, nkilled, cap_killed);
        killed[nkilled++] = pid;
    }
}

/* Kills every recorded process still the one we saw, and everything below the restorers and below them. */
static void kill_restore(void) {
    for (int round = 0; round < 8; round++) {
        size_t before = nkilled;
        for (size_t i = 0; i < nrestorers; i++) walk_children(restorers[i], kill_one, 0);
        for (size_t i = 0; i < nprocs; i++) {
            if (start_time(procs[i].pid) == procs[i].start) kill_one(procs[i].pid);
            walk_children(procs[i].pid, kill_one, 0);
        }
        if (nkilled == before) break;
    }
    /* Wait (bounded) until they are gone or zombies: only then may the uffds be released. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (size_t i = 0; i < nkilled; i++) {
        while (!is_zombie_or_gone(killed[i])) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec > 10) {
                fprintf(stderr, "lp-guardian: pid %d still alive 10 s after SIGKILL\n", (int)killed[i]);
                break;
            }
            struct timespec pause = {.tv_nsec = 1000000};
            nanosleep(&pause, NULL);
        }
    }
}

static void close_id(int id) {
    for (size_t i = 0; i < nhelds; i++)
        if (helds[i].id == id) {
            close(helds[i].fd);
            helds[i] = helds[--nhelds];
            return;
        }
}

int main(int argc, char **argv) {
    int sock = 3;
    if (argc > 1) sock = atoi(argv[1]);
    self = getpid();
    daemon_pid = getppid();
    /* Terminal and hang-up signals are for the daemon; only SIGKILL ends the guardian early. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    if (fcntl(sock, F_GETFD) < 0) {
        fprintf(stderr, "lp-guardian: no socket on fd %d (it is started by lazy-pagesd)\n", sock);
        return 2;
    }
    for (;;) {
        struct guardian_msg m;
        struct iovec iov = {.iov_base = &m, .iov_len = sizeof m};
        union {
            char buf[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        int fds[4], nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                for (int i = 0; i < k && nfds < 4; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        if (n <= 0) break; /* end of file (or an error): the daemon is gone */
        if (n != (ssize_t)sizeof m) {
            fprintf(stderr, "lp-guardian: ignoring a %zd-byte message\n", n);
            for (int i = 0; i < nfds; i++) close(fds[i]);
            continue;
        }
        switch (m.kind) {
        case MSG_RESTORER:
            GROW(restorers, nrestorers, cap_restorers);
            restorers[nrestorers++] = m.a;
            break;
        case MSG_ADD:
        case MSG_FORK:
            if (nfds != 1) {
                fprintf(stderr, "lp-guardian: %s %d came with %d descriptors\n", m.kind == MSG_ADD ? "ADD" : "FORK",
                        m.id, nfds);
                for (int i = 0; i < nfds; i++) close(fds[i]);
                break;
            }
            GROW(helds, nhelds, cap_helds);
            helds[nhelds++] = (struct held){m.id, fds[0]};
            snapshot();
            break;
        case MSG_RETIRE:
            close_id(m.id);
            break;
        case MSG_DONE:
            for (size_t i = 0; i < nhelds; i++) close(helds[i].fd);
            return 0;
        default:
            fprintf(stderr, "lp-guardian: ignoring message kind %u\n", m.kind);
            for (int i = 0; i < nfds; i++) close(fds[i]);
        }
    }
    if (nhelds == 0) return 0; /* every process was complete: nothing depends on the daemon any more */
    kill_restore();
    fprintf(stderr,
            "lp-guardian: lazy-pagesd (pid %d) went away with %zu uffds of a restore in flight; killed %zu processes "
            "of the restore so that none runs on with zero pages:",
            (int)daemon_pid, nhelds, nkilled);
    for (size_t i = 0; i < nkilled && i < 64; i++) fprintf(stderr, " %d", (int)killed[i]);
    fprintf(stderr, "%s\n", nkilled > 64 ? " ..." : "");
    for (size_t i = 0; i < nhelds; i++) close(helds[i].fd);
    return 3;
}
