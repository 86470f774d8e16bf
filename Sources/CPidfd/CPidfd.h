/*
 * CPidfd: process file descriptors for Swift. Glibc's Swift module map leaves out <sys/pidfd.h>, and Swift cannot
 * call the variadic syscall(), so each call is wrapped in a one-line static inline function. No logic here.
 */
#ifndef C_PIDFD_H
#define C_PIDFD_H

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* pidfd_open(2): a descriptor that refers to process `pid` (readable once it exits). */
static inline int CPidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(__NR_pidfd_open, pid, flags);
}

/* pidfd_send_signal(2) with no siginfo: signals exactly the process the descriptor refers to, never a reused pid. */
static inline int CPidfd_send_signal(int pidfd, int sig, unsigned int flags) {
    return (int)syscall(__NR_pidfd_send_signal, pidfd, sig, (void *)0, flags);
}

/* prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants (e.g. what `criu restore -d` leaves) become our children,
 * so their exit can be reaped at once (prctl is variadic too). */
static inline int CPidfd_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

#endif
