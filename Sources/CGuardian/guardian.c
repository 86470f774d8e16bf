/*
 * The restore guardian of lazy-pagesd: the daemon's death is never silent.
 *
 * When the last descriptor of a uffd is closed, the kernel unregisters its ranges and wakes every waiting thread:
 * they then read fresh zero pages and run on with wrong memory. The guardian is a child of the daemon made with
 * clone(CLONE_FILES) and no exec, so it shares the daemon's file descriptor table: every uffd the daemon holds —
 * including the child uffd a fork event installs at the very moment the daemon reads it — stays open as long as
 * the guardian lives, whatever happens to the daemon. (A guardian holding duplicates sent over a socket would
 * leave a window between reading a fork event and sending its uffd: a daemon killed there lets the child run on
 * zero pages.)
 *
 * The guardian waits on a pidfd of the daemon and on its message pipe:
 *   RESTORER pid fd  the process on the other end of the lazy-pages socket (the restored tasks are its
 *                  descendants) and that connection's descriptor: on the daemon's death, bytes still queued in it
 *                  (uffds in flight) mean the restore is in flight; they are not received (no room may be left in
 *                  the table), the connection is kept open until the tasks are dead
 *   SNAPSHOT       a uffd was adopted: record the restorers' descendants now (pid and start time), so processes
 *                  the restorer lets go of later are still known
 *   LISTENER fd    the lazy-pages listening socket (in the shared table). A restorer that connected but was not
 *                  accepted yet has its tasks' uffds in flight in that connection: on the daemon's death the
 *                  guardian accepts such connections to learn their restorers (SO_PEERCRED) and keeps them open
 *                  until the tasks are dead (closing them would release the uffds in flight). A connection the
 *                  daemon accepted but died before reporting (RESTORER) is found in the shared table by its local
 *                  address, which is the listener's
 *   PEERS_ARE_TASKS  the process on the other end of a connection is itself the one waiting on the uffd it sent
 *                  (Firecracker: the VM keeps its own uffd and hangs on a fault nobody answers): from now on a
 *                  RESTORER pid, and the peer of every connection found, is recorded as a process of the restore
 *                  (killed) rather than as a restorer (held, its descendants killed)
 *   DONE           the restore ended cleanly: exit 0
 *   ABORT          the restore failed: kill its processes now (the daemon waits for us, holding the uffds)
 * If the daemon exits without DONE and the restore is in flight (a uffd open in the shared table, or bytes queued in
 * a restorer's connection), it
 * stops (SIGSTOP) every process of the restore — the recorded ones whose start time still matches, and the
 * descendants of the restorers and of those, walking /proc/PID/task/TID/children until a pass finds nobody new —
 * then SIGKILLs them all (stopped first, none can exit and orphan a child before it is found), waits until they
 * are gone, and only then exits, which closes the uffds. The restorers themselves are held (SIGSTOP) meanwhile, so
 * that none starts a task the walk cannot see any more; once the tasks are dead their connections are closed and
 * they are continued (SIGCONT): their next send fails and they fail the restore. Exit 3 after killing, 0 otherwise
 * (also when it knows no process of the restore at all: in lazy-pagesd serve one descriptor table holds the uffds
 * of every job, so an open uffd alone does not say that this restore has processes to end).
 *
 * It runs in a copy of a multithreaded process without exec: only raw system calls here (no malloc, no stdio, no
 * locks), static storage only.
 */
#define _GNU_SOURCE
#include "CGuardian.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

enum { MAX_PIDS = 16384, MAX_RESTORERS = 16, PID_SET = 32768 /* a power of two above 2 * MAX_PIDS */ };

struct known {
    pid_t pid;
    unsigned long long start;
};

static struct known g_known[MAX_PIDS];
static int g_nknown;
static pid_t g_restorers[MAX_RESTORERS];
static int g_nrestorers;
static pid_t g_killed[MAX_PIDS];
static int g_nkilled;
/* Open-addressing sets of the pids in g_known and g_killed: a restore of thousands of tasks must not cost a scan
 * of every known pid per pid found. */
static pid_t g_known_set[PID_SET], g_killed_set[PID_SET];
/* The breadth-first queue of walk(). */
static pid_t g_queue[MAX_PIDS];
static pid_t g_self, g_daemon;
static int g_listener = -1;
static int g_connections[MAX_RESTORERS];
static int g_nconnections;
/* Which open file each descriptor number the daemon told us about was (device, inode), and which connections the
 * guardian accepted itself. In lazy-pagesd serve the daemon goes on after an ABORT: a number it closed may since
 * name another job's socket, so a descriptor is used only while it is still the same file, and one of the
 * daemon's is never closed while the daemon lives (shut down instead: the daemon closes its own). */
static dev_t g_connection_dev[MAX_RESTORERS], g_listener_dev;
static ino_t g_connection_ino[MAX_RESTORERS], g_listener_ino;
static int g_connection_ours[MAX_RESTORERS];
static int g_aborted;
static int g_peers_are_tasks;

/* Whether a restorer connection still has bytes queued: its tasks' uffds may be in flight in it. Nothing is
 * received: a descriptor received without room in the table is dropped by the kernel (its task's last copy: zero
 * pages). Kept open until the tasks are dead, the connection keeps what it holds alive. */
static int queued(int fd) {
    int bytes = 0;
    return ioctl(fd, FIONREAD, &bytes) == 0 && bytes > 0;
}
static void identify(int fd, dev_t *dev, ino_t *ino) {
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        *dev = st.st_dev;
        *ino = st.st_ino;
    } else {
        *dev = 0;
        *ino = 0;
    }
}

static int still_same(int fd, dev_t dev, ino_t ino) {
    struct stat st;
    return fd >= 0 && ino != 0 && fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

/* Descriptors kept in reserve in the shared table: if the daemon ran out of descriptors, the guardian still has
 * room to walk /proc once it closes these. */
enum { RESERVE = 4 };
static int g_reserve[RESERVE] = {-1, -1, -1, -1};


/* ---- tiny helpers (no libc state) ---- */

static void put(char **p, const char *s) {
    while (*s) *(*p)++ = *s++;
}

static void put_num(char **p, long long v) {
    char tmp[24];
    int n = 0;
    if (v < 0) *(*p)++ = '-', v = -v;
    do tmp[n++] = (char)('0' + v % 10), v /= 10;
    while (v);
    while (n) *(*p)++ = tmp[--n];
}

static long parse_num(const char **s) {
    long v = 0;
    while (**s >= '0' && **s <= '9') v = v * 10 + (*(*s)++ - '0');
    return v;
}

static ssize_t read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t total = 0, n;
    while ((size_t)total < size - 1 && (n = read(fd, buf + total, size - 1 - (size_t)total)) > 0) total += n;
    close(fd);
    buf[total < 0 ? 0 : total] = 0;
    return total;
}

static void proc_path(char *out, pid_t pid, const char *tail) {
    char *p = out;
    put(&p, "/proc/");
    put_num(&p, pid);
    put(&p, tail);
    *p = 0;
}

/* Field 22 of /proc/PID/stat (start time), 0 when gone; *state gets field 3. */
static unsigned long long start_time(pid_t pid, char *state) {
    char path[64], buf[1024];
    proc_path(path, pid, "/stat");
    if (read_file(path, buf, sizeof buf) <= 0) return 0;
    char *p = strrchr(buf, ')');
    if (!p || !p[1]) return 0;
    p += 2;
    if (state) *state = *p;
    for (int field = 3; field < 22 && *p; p++)
        if (*p == ' ') field++;
    const char *q = p;
    return (unsigned long long)parse_num(&q);
}

static int gone(pid_t pid) {
    char state = 0;
    return start_time(pid, &state) == 0 || state == 'Z' || state == 'X';
}

/* ---- the process tree ---- */

/* Adds pid to set: 1 if added, 0 if it was there, -1 if the set is full. */
static int set_add(pid_t *set, pid_t pid) {
    unsigned h = ((unsigned)pid * 2654435761u) & (PID_SET - 1);
    for (int n = 0; n < PID_SET; n++, h = (h + 1) & (PID_SET - 1)) {
        if (set[h] == pid) return 0;
        if (set[h] == 0) {
            set[h] = pid;
            return 1;
        }
    }
    return -1;
}

static int set_has(const pid_t *set, pid_t pid) {
    unsigned h = ((unsigned)pid * 2654435761u) & (PID_SET - 1);
    for (int n = 0; n < PID_SET && set[h]; n++, h = (h + 1) & (PID_SET - 1))
        if (set[h] == pid) return 1;
    return 0;
}

static void record(pid_t pid) {
    if (pid == g_self || pid == g_daemon || pid <= 1) return;
    if (set_has(g_known_set, pid) || g_nknown == MAX_PIDS) return;
    unsigned long long st = start_time(pid, NULL);
    if (st && set_add(g_known_set, pid) == 1) g_known[g_nknown++] = (struct known){pid, st};
}

/* Stops a process of the restore (first pass: a stopped process cannot exit, so its children stay in the tree to
 * be found; SIGKILL comes once the whole tree is stopped). */
static void stop_one(pid_t pid) {
    if (pid == g_self || pid == g_daemon || pid <= 1) return;
    if (set_has(g_killed_set, pid)) return;
    if (g_nkilled < MAX_PIDS && kill(pid, SIGSTOP) == 0 && set_add(g_killed_set, pid) == 1) g_killed[g_nkilled++] = pid;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Calls fn on every descendant of root, parents before children (breadth first, every child listed: a process may
 * have thousands). At most two descriptors are open at a time (the table may be nearly full). */
static void walk(pid_t root, void (*fn)(pid_t)) {
    int head = 0, tail = 0;
    g_queue[tail++] = root;
    while (head < tail) {
        char path[64];
        proc_path(path, g_queue[head++], "/task");
        int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0) continue;
        char entries[2048];
        long n;
        while ((n = syscall(SYS_getdents64, dir, entries, sizeof entries)) > 0) {
            for (long off = 0; off < n;) {
                struct linux_dirent64 *e = (struct linux_dirent64 *)(entries + off);
                off += e->d_reclen;
                if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
                char cpath[96], *p = cpath, list[4096];
                put(&p, path);
                put(&p, "/");
                put(&p, e->d_name);
                put(&p, "/children");
                *p = 0;
                int fd = open(cpath, O_RDONLY | O_CLOEXEC);
                if (fd < 0) continue;
                long child = -1;
                ssize_t got;
                /* The list is read in pieces: a number may straddle two reads. */
                for (;;) {
                    got = read(fd, list, sizeof list);
                    for (ssize_t i = 0; i < got || (got <= 0 && child >= 0); i++) {
                        if (got > 0 && list[i] >= '0' && list[i] <= '9') {
                            child = (child < 0 ? 0 : child * 10) + (list[i] - '0');
                        } else if (child >= 0) { /* a separator, or the end of the list */
                            if ((pid_t)child != g_self) {
                                fn((pid_t)child);
                                if (tail < MAX_PIDS) g_queue[tail++] = (pid_t)child;
                            }
                            child = -1;
                        }
                    }
                    if (got <= 0) break;
                }
                close(fd);
            }
        }
        close(dir);
    }
}

/* Records connection fd (once) and its peer as a restorer. */
static void add_connection(int fd, int ours) {
    for (int i = 0; i < g_nconnections; i++)
        if (g_connections[i] == fd) return;
    int creds[3] = {0, 0, 0}; /* struct ucred */
    socklen_t len = sizeof creds;
    int got = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, creds, &len) == 0 && creds[0] > 0;
    if (got && g_peers_are_tasks) {
        record(creds[0]);
    } else if (got && g_nrestorers < MAX_RESTORERS) {
        int known = 0;
        for (int i = 0; i < g_nrestorers; i++) known |= g_restorers[i] == creds[0];
        if (!known) g_restorers[g_nrestorers++] = creds[0];
    }
    if (g_nconnections < MAX_RESTORERS) {
        identify(fd, &g_connection_dev[g_nconnections], &g_connection_ino[g_nconnections]);
        g_connection_ours[g_nconnections] = ours;
        g_connections[g_nconnections++] = fd;
    }
}

static int same_address(const struct sockaddr_un *a, socklen_t alen, const struct sockaddr_un *b, socklen_t blen) {
    return alen == blen && alen > (socklen_t)sizeof(sa_family_t) && memcmp(a, b, alen) == 0;
}

/* Calls visit on every descriptor of the (shared) table until it returns non-zero. Returns that value, 0 when no
 * visit did, -1 when /proc/self/fd cannot be read. */
static int each_descriptor(int (*visit)(int fd)) {
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    char entries[2048];
    long n;
    int result = 0;
    while (!result && (n = syscall(SYS_getdents64, dir, entries, sizeof entries)) > 0) {
        for (long off = 0; off < n && !result;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(entries + off);
            off += e->d_reclen;
            const char *name = e->d_name;
            if (*name < '0' || *name > '9') continue;
            int fd = (int)parse_num(&name);
            if (fd != dir) result = visit(fd);
        }
    }
    close(dir);
    return result;
}

/* The listener's address, for take_if_accepted. */
static struct sockaddr_un g_listening;
static socklen_t g_listening_len;

/* A socket whose local address is the listener's was accepted from it (an accepted unix socket carries its
 * listener's address): a restorer connection. */
static int take_if_accepted(int fd) {
    struct sockaddr_un other;
    socklen_t len = sizeof other;
    if (fd != g_listener && getsockname(fd, (struct sockaddr *)&other, &len) == 0 && same_address(&g_listening,
        g_listening_len, &other, len))
        add_connection(fd, 0);
    return 0;
}

/* Finds connections the daemon accepted from the listener but had not reported yet (it died between accept() and
 * its RESTORER message). Their queued uffds are in flight too. */
static void sweep_accepted(void) {
    if (g_listener < 0 || !still_same(g_listener, g_listener_dev, g_listener_ino)) return;
    g_listening_len = sizeof g_listening;
    if (getsockname(g_listener, (struct sockaddr *)&g_listening, &g_listening_len) != 0 ||
        g_listening.sun_family != AF_UNIX)
        return;
    each_descriptor(take_if_accepted);
}

/* Accepts every connection waiting on the listener and records its peer as a restorer (kept open). */
static void sweep_listener(void) {
    if (g_listener < 0 || !still_same(g_listener, g_listener_dev, g_listener_ino)) return;
    int flags = fcntl(g_listener, F_GETFL);
    if (flags < 0 || fcntl(g_listener, F_SETFL, flags | O_NONBLOCK) < 0) return; /* not a listener any more */
    for (;;) {
        int fd = accept4(g_listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        add_connection(fd, 1);
    }
}

/* Restorers stopped (SIGSTOP) while their tasks are killed, continued (SIGCONT) afterwards. */
static pid_t g_held[MAX_RESTORERS];
static int g_nheld;

static void hold_restorers(void) {
    for (int i = 0; i < g_nrestorers; i++) {
        pid_t pid = g_restorers[i];
        int held = pid == g_self || pid == g_daemon || pid <= 1;
        for (int j = 0; j < g_nheld && !held; j++) held = g_held[j] == pid;
        if (!held && g_nheld < MAX_RESTORERS && kill(pid, SIGSTOP) == 0) g_held[g_nheld++] = pid;
    }
}

static int is_uffd(int fd) {
    char path[64], *p = path, target[64];
    put(&p, "/proc/self/fd/");
    put_num(&p, fd);
    *p = 0;
    ssize_t len = readlink(path, target, sizeof target - 1);
    if (len <= 0) return 0;
    target[len] = 0;
    return strcmp(target, "anon_inode:[userfaultfd]") == 0;
}

/* Whether a uffd is open in the (shared) descriptor table: the restore is in flight. */
static int uffds_open(void) {
    return each_descriptor(is_uffd) != 0; /* -1: cannot tell, assume the worst */
}

static void say(const char *text) {
    size_t len = strlen(text);
    while (len) {
        ssize_t w = write(2, text, len);
        if (w <= 0) return;
        text += w;
        len -= (size_t)w;
    }
}

static long long monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int guardian_main(int pidfd, int messages) {
    int snapshot_due = 0;
    long long next_walk = 0; /* walks are paced: after one of d ms, the next starts d ms later at the earliest */
    for (;;) {
        struct pollfd fds[2] = {{.fd = pidfd, .events = POLLIN}, {.fd = messages, .events = POLLIN}};
        long long wait = snapshot_due ? next_walk - monotonic_ms() : -1;
        int ready = poll(fds, 2, snapshot_due ? (wait > 0 ? (int)wait : 0) : -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (ready == 0) {
            /* Every queued message read: one walk answers all the snapshots asked for meanwhile (a walk of a
             * restore of thousands of tasks takes long; one per adopted uffd would fall ever further behind). */
            snapshot_due = 0;
            long long began = monotonic_ms();
            for (int i = 0; i < g_nrestorers; i++) walk(g_restorers[i], record);
            long long now = monotonic_ms();
            next_walk = now + (now - began);
            continue;
        }
        if (fds[1].revents & POLLIN) {
            struct lp_guardian_msg m;
            ssize_t n = read(messages, &m, sizeof m);
            if (n == (ssize_t)sizeof m) {
                if (m.kind == LP_GUARDIAN_DONE) return 0;
                if (m.kind == LP_GUARDIAN_ABORT) {
                    g_aborted = 1;
                    break;
                }
                if (m.kind == LP_GUARDIAN_PEERS_ARE_TASKS) g_peers_are_tasks = 1;
                if (m.kind == LP_GUARDIAN_RESTORER && g_peers_are_tasks) record(m.pid);
                else if (m.kind == LP_GUARDIAN_RESTORER && g_nrestorers < MAX_RESTORERS) g_restorers[g_nrestorers++] = m.pid;
                if (m.kind == LP_GUARDIAN_RESTORER && m.fd >= 0 && g_nconnections < MAX_RESTORERS) {
                    identify(m.fd, &g_connection_dev[g_nconnections], &g_connection_ino[g_nconnections]);
                    g_connection_ours[g_nconnections] = 0;
                    g_connections[g_nconnections++] = m.fd;
                }
                if (m.kind == LP_GUARDIAN_LISTENER) {
                    g_listener = m.pid;
                    identify(g_listener, &g_listener_dev, &g_listener_ino);
                }
                if (m.kind == LP_GUARDIAN_RESTORER || m.kind == LP_GUARDIAN_SNAPSHOT) snapshot_due = 1;
                continue; /* messages first: a DONE may be queued right before the daemon's exit */
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP)) break; /* the daemon is gone */
    }
    /* Either the daemon is gone or it gave up; the shared table still holds its uffds. */
    for (int i = 0; i < RESERVE; i++)
        if (g_reserve[i] >= 0) close(g_reserve[i]);
    /* No connection after this point: a shut-down listener refuses connect() (ECONNREFUSED), while the ones queued
     * can still be accepted. Without it, a peer could connect after the sweep into a listener kept open by another
     * job's guardian (lazy-pagesd serve: one shared table), send its uffd, and be left waiting when it closes. */
    if (g_listener >= 0 && still_same(g_listener, g_listener_dev, g_listener_ino)) shutdown(g_listener, SHUT_RDWR);
    sweep_accepted();
    sweep_listener();
    int in_flight = uffds_open();
    for (int i = 0; i < g_nconnections && !in_flight; i++)
        in_flight = still_same(g_connections[i], g_connection_dev[i], g_connection_ino[i]) && queued(g_connections[i]);
    /* A peer that is itself the waiting process (a VM) depends on us as long as it is connected and alive. */
    for (int i = 0; i < g_nknown && g_peers_are_tasks && !in_flight; i++)
        in_flight = start_time(g_known[i].pid, NULL) == g_known[i].start;
    /* Nobody of this restore known: nothing to end (another job's uffd may be what is open). */
    if (g_nrestorers == 0 && g_nknown == 0) in_flight = 0;
    /* Nothing in flight (no uffd open, nothing queued in a connection): every process had its pages, or the
     * restorer never handed one over (it keeps its own copies and fails the restore itself). */
    if (!in_flight) return 0;
    /* Hold the restorers (SIGSTOP) while their tasks are killed: a restorer still running would start more tasks
     * after the walk found its children, and send their uffds into a connection about to close. */
    hold_restorers();
    /* Stop the whole tree first (until a pass finds nobody new: a fork in progress may add a child), so that no
     * process exits and orphans its children before they are found; then kill everything stopped. */
    for (int i = 0; i < g_nknown; i++)
        if (start_time(g_known[i].pid, NULL) == g_known[i].start) stop_one(g_known[i].pid);
    for (int round = 0; round < 64; round++) {
        if (round == 1) { /* a restorer that connected meanwhile (its connection is kept open) */
            sweep_listener();
            hold_restorers();
        }
        int before = g_nkilled;
        for (int i = 0; i < g_nrestorers; i++) walk(g_restorers[i], stop_one);
        for (int i = 0; i < g_nkilled; i++) walk(g_killed[i], stop_one);
        if (g_nkilled == before && round > 0) break;
    }
    for (int i = 0; i < g_nkilled; i++) kill(g_killed[i], SIGKILL);
    struct timespec began, now, pause = {.tv_nsec = 1000000};
    clock_gettime(CLOCK_MONOTONIC, &began);
    for (int i = 0; i < g_nkilled; i++)
        while (!gone(g_killed[i])) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - began.tv_sec > 10) break;
            nanosleep(&pause, NULL);
        }
    /* Every task is dead: close the restorers' connections (a restorer sending more fails with EPIPE, and fails its
     * restore) and the listener, then let the restorers go on. */
    for (int i = 0; i < g_nconnections; i++) {
        if (!still_same(g_connections[i], g_connection_dev[i], g_connection_ino[i])) continue;
        if (g_aborted && !g_connection_ours[i]) shutdown(g_connections[i], SHUT_RDWR); /* the daemon closes it */
        else close(g_connections[i]);
    }
    if (!g_aborted && still_same(g_listener, g_listener_dev, g_listener_ino)) close(g_listener);
    for (int i = 0; i < g_nheld; i++) kill(g_held[i], SIGCONT);
    char line[1024], *p = line;
    put(&p, "lp-guardian: lazy-pagesd (pid ");
    put_num(&p, g_daemon);
    put(&p, gone(g_daemon) ? ") went away with a restore in flight; killed " : ") gave up the restore; killed ");
    put_num(&p, g_nkilled);
    put(&p, " processes of the restore so that none runs on with zero pages:");
    for (int i = 0; i < g_nkilled && i < 48; i++) {
        put(&p, " ");
        put_num(&p, g_killed[i]);
    }
    put(&p, g_nkilled > 48 ? " ...\n" : "\n");
    *p = 0;
    say(line);
    return LP_GUARDIAN_EXIT_KILLED;
}

pid_t lp_guardian_start(int *control) {
    pid_t daemon = getpid();
    int pidfd = (int)syscall(SYS_pidfd_open, daemon, 0);
    if (pidfd < 0) return -errno;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC)) {
        int e = errno;
        close(pidfd);
        return -e;
    }
    /* Like fork (own copy of memory, SIGCHLD to us at exit) but sharing the descriptor table. */
    long child = syscall(SYS_clone, (unsigned long)(CLONE_FILES | SIGCHLD), NULL, NULL, NULL, 0UL);
    if (child < 0) {
        int e = errno;
        close(pidfd);
        close(pipefd[0]);
        close(pipefd[1]);
        return -e;
    }
    if (child == 0) {
        g_self = (pid_t)syscall(SYS_getpid);
        g_daemon = daemon;
        struct sigaction ignore = {.sa_handler = SIG_IGN};
        sigaction(SIGINT, &ignore, NULL);
        sigaction(SIGTERM, &ignore, NULL);
        sigaction(SIGHUP, &ignore, NULL);
        sigaction(SIGPIPE, &ignore, NULL);
        setpgid(0, 0);
        for (int i = 0; i < RESERVE; i++) g_reserve[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        syscall(SYS_exit_group, guardian_main(pidfd, pipefd[0]));
    }
    *control = pipefd[1];
    return (pid_t)child;
}
