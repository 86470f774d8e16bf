/*
 * CLinuxSupport: the Linux calls and macros Swift cannot import, for the LinuxSupport module (and only it).
 *
 * Glibc's Swift module map leaves out <sys/epoll.h>, <sys/eventfd.h>, <sys/timerfd.h>, <sys/fsuid.h> and
 * <sys/pidfd.h>; Swift cannot call the variadic syscall() nor expand the CMSG_* macros. Each is wrapped here in a
 * one-line static inline function with the CLinuxSupport_ prefix (as CNIOLinux does for swift-nio). No logic.
 */
#ifndef C_LINUX_SUPPORT_H
#define C_LINUX_SUPPORT_H

#include <signal.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* pidfd_open(2): a descriptor that refers to process `pid` (readable once it exits). */
static inline int CLinuxSupport_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(__NR_pidfd_open, pid, flags);
}

/* pidfd_send_signal(2) with no siginfo: signals exactly the process the descriptor refers to, never a reused pid. */
static inline int CLinuxSupport_pidfd_send_signal(int pidfd, int sig, unsigned int flags) {
    return (int)syscall(__NR_pidfd_send_signal, pidfd, sig, (void *)0, flags);
}

/* memfd_create(2): an anonymous shared memory file (glibc declares it only with _GNU_SOURCE). */
static inline int CLinuxSupport_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(__NR_memfd_create, name, flags);
}

/* setfsuid(2)/setfsgid(2): the calling thread's filesystem identity. */
/* prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants (e.g. what `criu restore -d` leaves) become our children,
 * so their exit can be reaped at once (prctl is variadic). */
static inline int CLinuxSupport_become_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

static inline int CLinuxSupport_setfsuid(uid_t uid) { return setfsuid(uid); }
static inline int CLinuxSupport_setfsgid(gid_t gid) { return setfsgid(gid); }

/* The CMSG_* macros of <sys/socket.h>, for SCM_RIGHTS messages. */
static inline size_t CLinuxSupport_CMSG_SPACE(size_t payload) { return CMSG_SPACE(payload); }
static inline size_t CLinuxSupport_CMSG_LEN(size_t payload) { return CMSG_LEN(payload); }
static inline struct cmsghdr *CLinuxSupport_CMSG_FIRSTHDR(const struct msghdr *message) {
    return CMSG_FIRSTHDR(message);
}
static inline struct cmsghdr *CLinuxSupport_CMSG_NXTHDR(struct msghdr *message, struct cmsghdr *header) {
    return CMSG_NXTHDR(message, header);
}
static inline unsigned char *CLinuxSupport_CMSG_DATA(struct cmsghdr *header) { return CMSG_DATA(header); }

#endif
