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
    /* fd: the restore's journal (a memory file, see RestoreJournal.swift); pid: 1 when the guardian may hand the
     * restore over to a successor daemon on the daemon's death, 0 when it only records the restore's processes in
     * it. The guardian loads the processes an earlier guardian recorded there (a successor's guardian). */
    LP_GUARDIAN_JOURNAL = 7,
    /* fd: the write end of the pipe on which the successor that started this daemon waits (the successor's
     * daemon passes it once its own guardian knows the restore): the guardian closes it, which tells the waiting
     * guardian that the hand-over is complete. */
    LP_GUARDIAN_ADOPTED = 8,
    /* Who may connect to the listener (the daemon's SocketAccess rule, applied to the connections the guardian
     * accepts itself): pid = the owner's uid, fd = the owner's gid, reserved = LP_GUARDIAN_ACCESS_* flags. */
    LP_GUARDIAN_ACCESS = 9,
};
enum { LP_GUARDIAN_ACCESS_ROOT = 1, LP_GUARDIAN_ACCESS_GROUP = 2 };

/* The exit status of a successor daemon (lazy-pagesd adopt) that refused the restore (its journal cannot vouch
 * for it): the waiting guardian then ends the processes at once instead of starting another successor. */
enum { LP_SUCCESSOR_EXIT_REFUSED = 75 };

/* The journal's layout, shared by RestoreJournal.swift and the guardian (which reads the header and writes the
 * processes it knows with pread/pwrite). All fields native-endian. */
enum {
    LP_JOURNAL_MAGIC_OFFSET = 0,          /* uint64 LP_JOURNAL_MAGIC */
    LP_JOURNAL_VERSION_OFFSET = 8,        /* uint32 */
    LP_JOURNAL_FLAGS_OFFSET = 12,         /* uint32 LP_JOURNAL_FLAG_* */
    LP_JOURNAL_READING_OFFSET = 16,       /* uint64: > 0 while the daemon reads messages not recorded yet */
    LP_JOURNAL_COUNT_OFFSET = 24,         /* uint64: entries recorded */
    LP_JOURNAL_HANDOVERS_OFFSET = 32,     /* uint32: successors started so far (the guardian counts) */
    LP_JOURNAL_MAX_HANDOVERS_OFFSET = 36, /* uint32: the most successors the guardian may start */
    LP_JOURNAL_DESCRIPTION_LENGTH_OFFSET = 40, /* uint32 */
    LP_JOURNAL_KNOWN_COUNT_OFFSET = 44,   /* uint32: entries of the known-process area */
    LP_JOURNAL_RESTORER_COUNT_OFFSET = 48, /* uint32: pids of the restorer area */
    LP_JOURNAL_PEERS_ARE_TASKS_OFFSET = 52, /* uint32: the guardian's PEERS_ARE_TASKS */
    LP_JOURNAL_DIED_AT_OFFSET = 56,       /* uint64: CLOCK_MONOTONIC ns when a guardian saw its daemon die */
    LP_JOURNAL_UFFD_READ_OFFSET = 64,     /* uint64: while the engine reads a uffd into the read area, the engine id
                                             of its process + 1 (0: no such read) */
    LP_JOURNAL_UFFD_READ_BEFORE_OFFSET = 72, /* uint64: entries recorded when that read began */
    LP_JOURNAL_WORD_READ_OFFSET = 80,     /* uint64: while a front end takes a word from a socket into the word area,
                                             that socket's descriptor + 1 (0: no such read) */
    LP_JOURNAL_WORD_READ_BEFORE_OFFSET = 88, /* uint64: entries recorded when that read began */
    LP_JOURNAL_WORD_OFFSET = 96,          /* int32: the word area (zero until the word is taken) */
    LP_JOURNAL_UFFD_MESSAGES_OFFSET = 2048, /* struct uffd_msg[LP_JOURNAL_UFFD_MESSAGES_MAX]: the read area, the
                                               messages of that read as the kernel wrote them (unused slots zero) */
    LP_JOURNAL_UFFD_MESSAGES_MAX = 64,
    LP_JOURNAL_DESCRIPTION_OFFSET = 4096, /* the page source's description, up to LP_JOURNAL_DESCRIPTION_MAX bytes */
    LP_JOURNAL_DESCRIPTION_MAX = 61440,
    LP_JOURNAL_RESTORERS_OFFSET = 65536,  /* int32[LP_JOURNAL_MAX_RESTORERS] */
    LP_JOURNAL_MAX_RESTORERS = 16,
    LP_JOURNAL_KNOWN_OFFSET = 69632,      /* struct lp_journal_known[LP_JOURNAL_MAX_KNOWN] */
    LP_JOURNAL_MAX_KNOWN = 16384,
    LP_JOURNAL_ENTRIES_OFFSET = 1048576,  /* struct of 40 bytes each (RestoreJournal.swift) */
};
enum {
    LP_JOURNAL_FLAG_FAILED = 1,     /* the restore failed or was cancelled: never continued */
    LP_JOURNAL_FLAG_OVERFLOWED = 2, /* more entries than the file holds: the journal cannot vouch any more */
    LP_JOURNAL_FLAG_NO_HANDOVER = 4, /* the operator turned hand-over off */
};
#define LP_JOURNAL_MAGIC 0x314c4e524a504cULL /* "LPJRNL1" */

struct lp_journal_known {
    int32_t pid;
    int32_t reserved;
    uint64_t start; /* field 22 of /proc/PID/stat */
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
