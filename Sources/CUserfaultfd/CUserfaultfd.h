/*
 * CUserfaultfd: the smallest C surface Swift needs to drive userfaultfd(2).
 *
 * Swift cannot call the variadic syscall() nor import the _IOWR()-built ioctl request codes, so this header
 * re-exports them as constants and wraps each call in a one-line static inline function. It holds no logic:
 * every decision (errno meaning, retries, outcomes) lives in the Swift `Userfaultfd` module.
 *
 * uffd only: the other Linux calls Swift cannot import (epoll, eventfd, timerfd, pidfd, ...) are in CLinuxSupport.
 *
 * The build box ships 6.1 UAPI headers while the kernel is newer; what 6.1 lacks is defined here, guarded so a
 * newer header wins.
 */
#ifndef C_USERFAULTFD_H
#define C_USERFAULTFD_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

/* ---- What the 6.1 headers lack ------------------------------------------------------------------------------ */

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
#endif

#ifndef UFFDIO_MOVE
struct uffdio_move {
    __u64 dst;
    __u64 src;
    __u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
    __u64 mode;
    __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

#ifndef UFFDIO_POISON
struct uffdio_poison {
    struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#ifndef __NR_userfaultfd
#error "__NR_userfaultfd is not defined for this architecture"
#endif

/* ---- Layout pins: the Swift side decodes uffd_msg by these offsets ------------------------------------------ */

_Static_assert(sizeof(struct uffd_msg) == 32, "uffd_msg is 32 bytes");
_Static_assert(offsetof(struct uffd_msg, event) == 0, "uffd_msg.event at 0");
_Static_assert(offsetof(struct uffd_msg, arg) == 8, "uffd_msg.arg at 8");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.flags) == 8, "pagefault.flags at 8");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.address) == 16, "pagefault.address at 16");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.feat.ptid) == 24, "pagefault.ptid at 24");
_Static_assert(offsetof(struct uffd_msg, arg.fork.ufd) == 8, "fork.ufd at 8");
_Static_assert(offsetof(struct uffd_msg, arg.remap.from) == 8, "remap.from at 8");
_Static_assert(offsetof(struct uffd_msg, arg.remap.to) == 16, "remap.to at 16");
_Static_assert(offsetof(struct uffd_msg, arg.remap.len) == 24, "remap.len at 24");
_Static_assert(offsetof(struct uffd_msg, arg.remove.start) == 8, "remove.start at 8");
_Static_assert(offsetof(struct uffd_msg, arg.remove.end) == 16, "remove.end at 16");
_Static_assert(sizeof(struct uffdio_api) == 24, "uffdio_api is 24 bytes");
_Static_assert(sizeof(struct uffdio_range) == 16, "uffdio_range is 16 bytes");
_Static_assert(sizeof(struct uffdio_register) == 32, "uffdio_register is 32 bytes");
_Static_assert(sizeof(struct uffdio_copy) == 40, "uffdio_copy is 40 bytes");
_Static_assert(sizeof(struct uffdio_zeropage) == 32, "uffdio_zeropage is 32 bytes");
_Static_assert(sizeof(struct uffdio_writeprotect) == 24, "uffdio_writeprotect is 24 bytes");
_Static_assert(sizeof(struct uffdio_move) == 40, "uffdio_move is 40 bytes");
_Static_assert(sizeof(struct uffdio_poison) == 32, "uffdio_poison is 32 bytes");

/* ---- Constants Swift cannot import (macros built from _IO*) ------------------------------------------------- */

static const uint64_t CUserfaultfd_UFFD_API = UFFD_API;
static const unsigned long CUserfaultfd_USERFAULTFD_IOC_NEW = USERFAULTFD_IOC_NEW;
static const unsigned long CUserfaultfd_UFFDIO_API = UFFDIO_API;
static const unsigned long CUserfaultfd_UFFDIO_REGISTER = UFFDIO_REGISTER;
static const unsigned long CUserfaultfd_UFFDIO_UNREGISTER = UFFDIO_UNREGISTER;
static const unsigned long CUserfaultfd_UFFDIO_WAKE = UFFDIO_WAKE;
static const unsigned long CUserfaultfd_UFFDIO_COPY = UFFDIO_COPY;
static const unsigned long CUserfaultfd_UFFDIO_ZEROPAGE = UFFDIO_ZEROPAGE;
static const unsigned long CUserfaultfd_UFFDIO_MOVE = UFFDIO_MOVE;
static const unsigned long CUserfaultfd_UFFDIO_POISON = UFFDIO_POISON;
static const unsigned long CUserfaultfd_UFFDIO_WRITEPROTECT = UFFDIO_WRITEPROTECT;
static const unsigned long CUserfaultfd_UFFDIO_CONTINUE = UFFDIO_CONTINUE;

/* ioctl numbers as bit positions in uffdio_api.ioctls / uffdio_register.ioctls */
static const int CUserfaultfd_NR_REGISTER = _UFFDIO_REGISTER;
static const int CUserfaultfd_NR_UNREGISTER = _UFFDIO_UNREGISTER;
static const int CUserfaultfd_NR_WAKE = _UFFDIO_WAKE;
static const int CUserfaultfd_NR_COPY = _UFFDIO_COPY;
static const int CUserfaultfd_NR_ZEROPAGE = _UFFDIO_ZEROPAGE;
static const int CUserfaultfd_NR_MOVE = _UFFDIO_MOVE;
static const int CUserfaultfd_NR_WRITEPROTECT = _UFFDIO_WRITEPROTECT;
static const int CUserfaultfd_NR_CONTINUE = _UFFDIO_CONTINUE;
static const int CUserfaultfd_NR_POISON = _UFFDIO_POISON;
static const int CUserfaultfd_NR_API = _UFFDIO_API;

static const uint64_t CUserfaultfd_FEATURE_PAGEFAULT_FLAG_WP = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
static const uint64_t CUserfaultfd_FEATURE_EVENT_FORK = UFFD_FEATURE_EVENT_FORK;
static const uint64_t CUserfaultfd_FEATURE_EVENT_REMAP = UFFD_FEATURE_EVENT_REMAP;
static const uint64_t CUserfaultfd_FEATURE_EVENT_REMOVE = UFFD_FEATURE_EVENT_REMOVE;
static const uint64_t CUserfaultfd_FEATURE_MISSING_HUGETLBFS = UFFD_FEATURE_MISSING_HUGETLBFS;
static const uint64_t CUserfaultfd_FEATURE_MISSING_SHMEM = UFFD_FEATURE_MISSING_SHMEM;
static const uint64_t CUserfaultfd_FEATURE_EVENT_UNMAP = UFFD_FEATURE_EVENT_UNMAP;
static const uint64_t CUserfaultfd_FEATURE_SIGBUS = UFFD_FEATURE_SIGBUS;
static const uint64_t CUserfaultfd_FEATURE_THREAD_ID = UFFD_FEATURE_THREAD_ID;
static const uint64_t CUserfaultfd_FEATURE_MINOR_HUGETLBFS = UFFD_FEATURE_MINOR_HUGETLBFS;
static const uint64_t CUserfaultfd_FEATURE_MINOR_SHMEM = UFFD_FEATURE_MINOR_SHMEM;
static const uint64_t CUserfaultfd_FEATURE_EXACT_ADDRESS = UFFD_FEATURE_EXACT_ADDRESS;
static const uint64_t CUserfaultfd_FEATURE_WP_HUGETLBFS_SHMEM = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
static const uint64_t CUserfaultfd_FEATURE_WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED;
static const uint64_t CUserfaultfd_FEATURE_POISON = UFFD_FEATURE_POISON;
static const uint64_t CUserfaultfd_FEATURE_WP_ASYNC = UFFD_FEATURE_WP_ASYNC;
static const uint64_t CUserfaultfd_FEATURE_MOVE = UFFD_FEATURE_MOVE;

static const uint8_t CUserfaultfd_EVENT_PAGEFAULT = UFFD_EVENT_PAGEFAULT;
static const uint8_t CUserfaultfd_EVENT_FORK = UFFD_EVENT_FORK;
static const uint8_t CUserfaultfd_EVENT_REMAP = UFFD_EVENT_REMAP;
static const uint8_t CUserfaultfd_EVENT_REMOVE = UFFD_EVENT_REMOVE;
static const uint8_t CUserfaultfd_EVENT_UNMAP = UFFD_EVENT_UNMAP;

static const uint64_t CUserfaultfd_PAGEFAULT_FLAG_WRITE = UFFD_PAGEFAULT_FLAG_WRITE;
static const uint64_t CUserfaultfd_PAGEFAULT_FLAG_WP = UFFD_PAGEFAULT_FLAG_WP;
static const uint64_t CUserfaultfd_PAGEFAULT_FLAG_MINOR = UFFD_PAGEFAULT_FLAG_MINOR;

static const uint64_t CUserfaultfd_REGISTER_MODE_MISSING = UFFDIO_REGISTER_MODE_MISSING;
static const uint64_t CUserfaultfd_REGISTER_MODE_WP = UFFDIO_REGISTER_MODE_WP;
static const uint64_t CUserfaultfd_REGISTER_MODE_MINOR = UFFDIO_REGISTER_MODE_MINOR;

static const uint64_t CUserfaultfd_COPY_MODE_DONTWAKE = UFFDIO_COPY_MODE_DONTWAKE;
static const uint64_t CUserfaultfd_COPY_MODE_WP = UFFDIO_COPY_MODE_WP;
static const uint64_t CUserfaultfd_ZEROPAGE_MODE_DONTWAKE = UFFDIO_ZEROPAGE_MODE_DONTWAKE;
static const uint64_t CUserfaultfd_MOVE_MODE_DONTWAKE = UFFDIO_MOVE_MODE_DONTWAKE;
static const uint64_t CUserfaultfd_MOVE_MODE_ALLOW_SRC_HOLES = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
static const uint64_t CUserfaultfd_POISON_MODE_DONTWAKE = UFFDIO_POISON_MODE_DONTWAKE;
static const uint64_t CUserfaultfd_WRITEPROTECT_MODE_WP = UFFDIO_WRITEPROTECT_MODE_WP;
static const uint64_t CUserfaultfd_WRITEPROTECT_MODE_DONTWAKE = UFFDIO_WRITEPROTECT_MODE_DONTWAKE;

static const int CUserfaultfd_USER_MODE_ONLY = UFFD_USER_MODE_ONLY;
static const int CUserfaultfd_MSG_SIZE = (int)sizeof(struct uffd_msg);

/* ---- Calls: one line each, returning what the kernel returned (errno left in errno) ------------------------- */

/* The userfaultfd(2) system call; glibc has no wrapper. */
static inline int CUserfaultfd_syscall(int flags) {
    return (int)syscall(__NR_userfaultfd, flags);
}

/* USERFAULTFD_IOC_NEW on an open /dev/userfaultfd descriptor. */
static inline int CUserfaultfd_ioctl_new(int devfd, int flags) {
    return ioctl(devfd, USERFAULTFD_IOC_NEW, flags);
}

static inline int CUserfaultfd_ioctl_api(int fd, struct uffdio_api *arg) { return ioctl(fd, UFFDIO_API, arg); }
static inline int CUserfaultfd_ioctl_register(int fd, struct uffdio_register *arg) {
    return ioctl(fd, UFFDIO_REGISTER, arg);
}
static inline int CUserfaultfd_ioctl_unregister(int fd, struct uffdio_range *arg) {
    return ioctl(fd, UFFDIO_UNREGISTER, arg);
}
static inline int CUserfaultfd_ioctl_wake(int fd, struct uffdio_range *arg) { return ioctl(fd, UFFDIO_WAKE, arg); }
static inline int CUserfaultfd_ioctl_copy(int fd, struct uffdio_copy *arg) { return ioctl(fd, UFFDIO_COPY, arg); }
static inline int CUserfaultfd_ioctl_zeropage(int fd, struct uffdio_zeropage *arg) {
    return ioctl(fd, UFFDIO_ZEROPAGE, arg);
}
static inline int CUserfaultfd_ioctl_move(int fd, struct uffdio_move *arg) { return ioctl(fd, UFFDIO_MOVE, arg); }
static inline int CUserfaultfd_ioctl_poison(int fd, struct uffdio_poison *arg) {
    return ioctl(fd, UFFDIO_POISON, arg);
}
static inline int CUserfaultfd_ioctl_writeprotect(int fd, struct uffdio_writeprotect *arg) {
    return ioctl(fd, UFFDIO_WRITEPROTECT, arg);
}
static inline int CUserfaultfd_ioctl_continue(int fd, struct uffdio_continue *arg) {
    return ioctl(fd, UFFDIO_CONTINUE, arg);
}

#endif /* C_USERFAULTFD_H */
