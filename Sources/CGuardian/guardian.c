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
#include <sys/wait.h>
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
/* The restore's journal (-1: none) and whether a successor may be started from it (LP_GUARDIAN_JOURNAL). */
static int g_journal = -1;
static int g_handover;
/* The listener's access rule (LP_GUARDIAN_ACCESS); without one every peer counts (the daemon checked none). */
static int g_access_set, g_access_flags;
static uid_t g_owner_uid;
static gid_t g_owner_gid;

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

static void say(const char *text);

/* The daemon's SocketAccess rule (LinuxSupport/SocketAccess.swift) for a connection the guardian accepted: the
 * owner, root (unless turned off), or with group access a member of the owner's group (primary or supplementary,
 * SO_PEERGROUPS). A peer whose credentials cannot be read is refused. */
static gid_t g_peer_groups[4096];
static int peer_allowed(int fd) {
    if (!g_access_set) return 1;
    int creds[3] = {0, -1, -1}; /* struct ucred: pid, uid, gid */
    socklen_t len = sizeof creds;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, creds, &len) != 0) return 0;
    if ((uid_t)creds[1] == g_owner_uid) return 1;
    if ((g_access_flags & LP_GUARDIAN_ACCESS_ROOT) && creds[1] == 0) return 1;
    if (!(g_access_flags & LP_GUARDIAN_ACCESS_GROUP)) return 0;
    if ((gid_t)creds[2] == g_owner_gid) return 1;
    socklen_t glen = sizeof g_peer_groups;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g_peer_groups, &glen) != 0) return 0;
    for (socklen_t i = 0; i < glen / sizeof(gid_t); i++)
        if (g_peer_groups[i] == g_owner_gid) return 1;
    return 0;
}

/* Accepts every connection waiting on the listener and records its peer as a restorer (kept open). */
static void sweep_listener(void) {
    if (g_listener < 0 || !still_same(g_listener, g_listener_dev, g_listener_ino)) return;
    int flags = fcntl(g_listener, F_GETFL);
    if (flags < 0 || fcntl(g_listener, F_SETFL, flags | O_NONBLOCK) < 0) return; /* not a listener any more */
    for (;;) {
        int fd = accept4(g_listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        if (!peer_allowed(fd)) {
            /* Not the restore's: the daemon would have refused it too (its uffd, if any, is its sender's own). */
            say("lp-guardian: refused a connection on the lazy-pages socket from a peer the socket's access rule "
                "does not allow\n");
            close(fd);
            continue;
        }
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

/* ---- the journal and the hand-over (RestoreJournal.swift; layout in CGuardian.h) ---- */

static int pread_all(int fd, void *buf, size_t len, off_t at) {
    return pread(fd, buf, len, at) == (ssize_t)len;
}
static void pwrite_all(int fd, const void *buf, size_t len, off_t at) {
    while (len) {
        ssize_t n = pwrite(fd, buf, len, at);
        if (n <= 0) return;
        buf = (const char *)buf + n;
        len -= (size_t)n;
        at += n;
    }
}

/* A successor's guardian: loads the processes and restorers its predecessor recorded. */
static void journal_load(void) {
    uint32_t known = 0, restorers = 0, peers = 0;
    if (!pread_all(g_journal, &known, 4, LP_JOURNAL_KNOWN_COUNT_OFFSET) ||
        !pread_all(g_journal, &restorers, 4, LP_JOURNAL_RESTORER_COUNT_OFFSET) ||
        !pread_all(g_journal, &peers, 4, LP_JOURNAL_PEERS_ARE_TASKS_OFFSET))
        return;
    if (peers) g_peers_are_tasks = 1;
    static struct lp_journal_known chunk[256];
    for (uint32_t done = 0; done < known && done < LP_JOURNAL_MAX_KNOWN;) {
        uint32_t n = known - done < 256 ? known - done : 256;
        if (!pread_all(g_journal, chunk, n * sizeof chunk[0], LP_JOURNAL_KNOWN_OFFSET + done * sizeof chunk[0])) return;
        for (uint32_t i = 0; i < n; i++) {
            pid_t pid = chunk[i].pid;
            if (pid <= 1 || pid == g_self || g_nknown == MAX_PIDS) continue;
            if (start_time(pid, NULL) == chunk[i].start && set_add(g_known_set, pid) == 1)
                g_known[g_nknown++] = (struct known){pid, chunk[i].start};
        }
        done += n;
    }
    int32_t pids[LP_JOURNAL_MAX_RESTORERS];
    if (restorers > LP_JOURNAL_MAX_RESTORERS) restorers = LP_JOURNAL_MAX_RESTORERS;
    if (!pread_all(g_journal, pids, restorers * 4, LP_JOURNAL_RESTORERS_OFFSET)) return;
    for (uint32_t i = 0; i < restorers && g_nrestorers < MAX_RESTORERS; i++)
        if (pids[i] > 1 && !gone(pids[i])) g_restorers[g_nrestorers++] = pids[i];
}

/* The daemon died: records the processes this guardian knows (still alive) and the time, for a successor. */
static void journal_record(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t died = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
    pwrite_all(g_journal, &died, 8, LP_JOURNAL_DIED_AT_OFFSET);
    static struct lp_journal_known chunk[256];
    uint32_t written = 0, n = 0;
    for (int i = 0; i <= g_nknown; i++) {
        if (i < g_nknown && written + n < LP_JOURNAL_MAX_KNOWN && start_time(g_known[i].pid, NULL) == g_known[i].start)
            chunk[n++] = (struct lp_journal_known){g_known[i].pid, 0, g_known[i].start};
        if (n == 256 || (i == g_nknown && n)) {
            pwrite_all(g_journal, chunk, n * sizeof chunk[0], LP_JOURNAL_KNOWN_OFFSET + written * sizeof chunk[0]);
            written += n;
            n = 0;
        }
    }
    pwrite_all(g_journal, &written, 4, LP_JOURNAL_KNOWN_COUNT_OFFSET);
    uint32_t restorers = (uint32_t)g_nrestorers, peers = (uint32_t)g_peers_are_tasks;
    pwrite_all(g_journal, g_restorers, restorers * 4, LP_JOURNAL_RESTORERS_OFFSET);
    pwrite_all(g_journal, &restorers, 4, LP_JOURNAL_RESTORER_COUNT_OFFSET);
    pwrite_all(g_journal, &peers, 4, LP_JOURNAL_PEERS_ARE_TASKS_OFFSET);
}

/* Why the journal does not allow a hand-over (NULL: it does). The successor checks everything again. */
static const char *journal_refusal(void) {
    uint64_t magic = 0, reading = 0;
    uint32_t flags = 0, handovers = 0, most = 0;
    if (!pread_all(g_journal, &magic, 8, LP_JOURNAL_MAGIC_OFFSET) || magic != LP_JOURNAL_MAGIC) return "not-a-journal";
    if (!pread_all(g_journal, &flags, 4, LP_JOURNAL_FLAGS_OFFSET)) return "not-a-journal";
    if (flags & LP_JOURNAL_FLAG_NO_HANDOVER) return "handover-disabled";
    if (flags & LP_JOURNAL_FLAG_FAILED) return "failed";
    if (flags & LP_JOURNAL_FLAG_OVERFLOWED) return "overflowed";
    if (!pread_all(g_journal, &reading, 8, LP_JOURNAL_READING_OFFSET) || reading) return "reading-events";
    if (!pread_all(g_journal, &handovers, 4, LP_JOURNAL_HANDOVERS_OFFSET) ||
        !pread_all(g_journal, &most, 4, LP_JOURNAL_MAX_HANDOVERS_OFFSET) || handovers >= most)
        return "attempts-exhausted";
    return NULL;
}

static void inheritable(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}
static int inheritable_if_uffd(int fd) {
    if (is_uffd(fd)) inheritable(fd);
    return 0;
}

/* The dead daemon's TCP connections (its page-server client): shut down, so that the page server sees the client
 * gone now rather than when this guardian ends. A `lazy-pages page-server` serving one session listens again for a
 * successor only once the old connection ended; the successor reconnects from the journal's command line. Listening
 * sockets are left alone. */
static int shut_down_if_tcp_connection(int fd) {
    int domain = 0, listening = 0;
    socklen_t length = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) || (domain != AF_INET && domain != AF_INET6))
        return 0;
    length = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) || listening) return 0;
    shutdown(fd, SHUT_RDWR);
    return 0;
}

extern char **environ;

/* Starts a successor daemon (this binary, `lazy-pagesd adopt --journal FD --ready FD`) that inherits the uffds,
 * the journal, the listener and the restorer connections, and waits until it says it answers for the restore
 * (its guardian writes 'A' on the ready pipe). Returns 1 then; 0 when it refused (or every attempt failed): the
 * caller ends the processes. A successor reads no uffd before it says so: until then this guardian's table still
 * holds every descriptor the restore has. */
static int hand_over(void) {
    for (;;) {
        const char *why = journal_refusal();
        if (why) {
            char line[160], *p = line;
            put(&p, "lp-guardian: no hand-over: ");
            put(&p, why);
            put(&p, "\n");
            *p = 0;
            say(line);
            return 0;
        }
        uint32_t handovers = 0;
        pread_all(g_journal, &handovers, 4, LP_JOURNAL_HANDOVERS_OFFSET);
        handovers++;
        pwrite_all(g_journal, &handovers, 4, LP_JOURNAL_HANDOVERS_OFFSET);
        each_descriptor(inheritable_if_uffd);
        inheritable(g_journal);
        if (g_listener >= 0 && still_same(g_listener, g_listener_dev, g_listener_ino)) inheritable(g_listener);
        for (int i = 0; i < g_nconnections; i++)
            if (still_same(g_connections[i], g_connection_dev[i], g_connection_ino[i])) inheritable(g_connections[i]);
        int ready[2];
        if (pipe2(ready, O_CLOEXEC)) return 0;
        inheritable(ready[1]);
        static char journal_arg[24], ready_arg[24];
        char *p = journal_arg;
        put_num(&p, g_journal);
        *p = 0;
        p = ready_arg;
        put_num(&p, ready[1]);
        *p = 0;
        static char *argv[] = {"lazy-pagesd", "adopt", "--journal", journal_arg, "--ready", ready_arg, NULL};
        /* A raw clone, not fork(): glibc's fork handlers take locks a copy of a multithreaded process may hold. */
        long child = syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, 0UL);
        if (child == 0) {
            syscall(SYS_execve, "/proc/self/exe", argv, environ);
            syscall(SYS_exit_group, 127);
        }
        close(ready[1]);
        if (child < 0) {
            close(ready[0]);
            return 0;
        }
        /* Generous: a successor on a loaded machine reads and checks every image again before it answers. */
        struct pollfd wait_ready = {.fd = ready[0], .events = POLLIN};
        char answer = 0;
        int got = 0;
        long long deadline = monotonic_ms() + 120000;
        for (;;) {
            long long left = deadline - monotonic_ms();
            if (left <= 0) break;
            int r = poll(&wait_ready, 1, (int)left);
            if (r < 0 && errno == EINTR) continue;
            if (r > 0) got = read(ready[0], &answer, 1) == 1;
            break;
        }
        close(ready[0]);
        if (got && answer == 'A') return 1;
        int status = 0;
        if (!got) kill((pid_t)child, SIGKILL); /* timed out: it must not go on beside the fallback */
        while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
        if ((status & 0x7f) == 0 && ((status >> 8) & 0xff) == LP_SUCCESSOR_EXIT_REFUSED) {
            say("lp-guardian: no hand-over: the successor refused the restore\n");
            return 0;
        }
        say("lp-guardian: the successor daemon failed to start; trying again\n");
    }
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
                if (m.kind == LP_GUARDIAN_JOURNAL && m.fd >= 0) {
                    g_journal = m.fd;
                    g_handover = m.pid == 1;
                    journal_load();
                    snapshot_due = 1;
                }
                if (m.kind == LP_GUARDIAN_ADOPTED && m.fd >= 0) {
                    /* The successor's guardian knows the restore: the waiting predecessor may let go. */
                    char yes = 'A';
                    ssize_t w;
                    do w = write(m.fd, &yes, 1);
                    while (w < 0 && errno == EINTR);
                    close(m.fd);
                }
                if (m.kind == LP_GUARDIAN_ACCESS) {
                    g_access_set = 1;
                    g_owner_uid = (uid_t)m.pid;
                    g_owner_gid = (gid_t)m.fd;
                    g_access_flags = m.reserved;
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
    if (!g_aborted && g_journal >= 0) {
        /* The daemon died: record what this guardian knows for a successor (and its guardian), then try to hand
         * the restore over instead of ending it. */
        for (int i = 0; i < g_nrestorers; i++) walk(g_restorers[i], record);
        journal_record();
        int pending = uffds_open() || (g_listener >= 0 && still_same(g_listener, g_listener_dev, g_listener_ino));
        for (int i = 0; i < g_nconnections && !pending; i++)
            pending = still_same(g_connections[i], g_connection_dev[i], g_connection_ino[i]);
        each_descriptor(shut_down_if_tcp_connection);
        if (g_handover && pending) {
            if (hand_over()) return 0;
            /* Ended, not continued: a service restarted with this journal in its store must show the job failed,
             * not adopt it and call it completed once its processes are found dead. */
            uint32_t flags = 0;
            if (pread_all(g_journal, &flags, 4, LP_JOURNAL_FLAGS_OFFSET)) {
                flags |= LP_JOURNAL_FLAG_FAILED;
                pwrite_all(g_journal, &flags, 4, LP_JOURNAL_FLAGS_OFFSET);
            }
        }
    }
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
