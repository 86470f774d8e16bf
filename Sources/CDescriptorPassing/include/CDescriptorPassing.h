/* CDescriptorPassing: SCM_RIGHTS for the C helper programs (workloads, emulators, baselines). */
#ifndef CDESCRIPTORPASSING_H
#define CDESCRIPTORPASSING_H

#include <stddef.h>
#include <sys/types.h>

/* Sends `length` bytes of `data` over the unix socket `sock` with `count` descriptors attached (SCM_RIGHTS; 0 to 4,
 * 0 sends none), MSG_NOSIGNAL, retried on EINTR. Returns what sendmsg(2) returned (-1 with errno set on failure). */
ssize_t lp_send_with_fds(int sock, const void *data, size_t length, const int *fds, int count);

#endif
