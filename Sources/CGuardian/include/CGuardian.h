/* CGuardian: the restore guardian of lazy-pagesd (see guardian.c). */
#ifndef CGUARDIAN_H
#define CGUARDIAN_H

#include <stdint.h>
#include <sys/types.h>

/* Message kinds written to the guardian's pipe (struct lp_guardian_msg, 16 bytes, one write each). */
enum {
    LP_GUARDIAN_RESTORER = 1,
    LP_GUARDIAN_SNAPSHOT = 2,
    LP_GUARDIAN_LISTENER = 3,
    LP_GUARDIAN_PEERS_ARE_TASKS = 4,
    LP_GUARDIAN_DONE = 5,
    LP_GUARDIAN_ABORT = 6,
};

/* The guardian's exit status when it killed the restore's processes (0: it let them go, or nothing depended on
 * the daemon any more). */
enum { LP_GUARDIAN_EXIT_KILLED = 3 };

struct lp_guardian_msg {
    uint32_t kind;
    int32_t pid; /* RESTORER: the restorer's pid (with PEERS_ARE_TASKS: the process to end); LISTENER: the
                    listening socket's descriptor */
    int32_t fd;  /* RESTORER: the accepted connection's descriptor (in the shared table) */
    int32_t reserved;
};

/* Starts the guardian: a child process that shares this process's file descriptor table (clone(CLONE_FILES),
 * no exec). Returns its pid and stores the write end of its message pipe in *control, or returns -errno. */
pid_t lp_guardian_start(int *control);

#endif
