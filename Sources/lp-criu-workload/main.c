/*
 * lp-criu-workload: a real process for `criu dump` and `criu restore --lazy-pages`.
 *
 * Usage: lp-criu-workload --mode MODE --mib N --seed S --ready FIFO --result FIFO [--children K] [--threads T]
 *
 * It maps N MiB of anonymous private memory, fills it with S's pattern (one page in eight left untouched: those
 * must read zeros), sets up MODE (processes, threads, zombies; see modes.c), then writes one line to the fifo READY
 *
 *   READY pid=P pages=N base=0xADDRESS
 *
 * and closes it. From then on it (and every process of its tree) waits for SIGUSR1 and does nothing else, so it can
 * be dumped. Start it in a session of its own with stdio on files (setsid; `criu dump` refuses a process sharing
 * its parent's terminal); after `criu restore --restore-detached` it is no one's child, so it reports through the
 * fifo RESULT, opened by path after the restore. Send SIGUSR1 to its process group (kill -USR1 -P): every process
 * checks every byte of its memory against the pattern (faulting the pages in), folds in its descendants' results,
 * and the first process writes one line to RESULT
 *
 *   OK   mode=M pid=P pages=N checked=C processes=K [detail]
 *   FAIL mode=M pid=P pages=N checked=C bad=B first_page=I byte=J expected=0x.. got=0x.. child_failures=F [detail]
 *
 * and exits 0 (OK) or 1 (FAIL); 2 on a setup error. Diagnostics go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "criu_workload.h"

void note(const char *fmt, ...)
{
	char line[512];
	int n = snprintf(line, sizeof line, "lp-criu-workload[%d]: ", (int)getpid());
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	(void)!write(2, line, (size_t)n);
}

/* Opens the fifo `path` for writing (blocking until its reader is there), writes `line`, closes it. */
static int report(const char *path, const char *line)
{
	int fd;
	while ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (fd < 0) {
		note("open %s: %s", path, strerror(errno));
		return -1;
	}
	size_t len = strlen(line), done = 0;
	while (done < len) {
		ssize_t n = write(fd, line + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			note("write %s: %s", path, strerror(errno));
			close(fd);
			return -1;
		}
		done += (size_t)n;
	}
	close(fd);
	return 0;
}

static void usage(void)
{
	note("usage: lp-criu-workload --mode idle|random|fork|zombie|threads|tree|guard --mib N --seed S --ready FIFO "
	     "--result FIFO [--children K] [--threads T]");
	exit(2);
}

int main(int argc, char **argv)
{
	struct options o = {.mode = "idle", .mib = 16, .seed = 1, .children = 2, .threads = 4};
	const char *ready = NULL, *result = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (!strcmp(a, "--mode"))
			o.mode = v;
		else if (!strcmp(a, "--mib"))
			o.mib = strtoul(v, NULL, 0);
		else if (!strcmp(a, "--seed"))
			o.seed = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--children"))
			o.children = atoi(v);
		else if (!strcmp(a, "--threads"))
			o.threads = atoi(v);
		else if (!strcmp(a, "--ready"))
			ready = v;
		else if (!strcmp(a, "--result"))
			result = v;
		else
			usage();
	}
	if (!ready || !result || o.mib == 0 || o.seed == 0)
		usage();

	/* Only stdio is ours: whatever else the starter leaked to us (a test process's sockets, pipes of other suites
	 * running beside it) would be dumped with us, and CRIU cannot restore a connected TCP socket or a bound port. */
	close_range(3, ~0U, 0);

	/* SIGUSR1 is taken with sigwaitinfo by every process and thread: block it before anything is created. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);

	struct region r;
	if (region_map(&r, o.mib) < 0) {
		note("mmap %zu MiB: %s", o.mib, strerror(errno));
		return 2;
	}
	region_fill(&r, o.seed);
	if (mode_prepare(&o, &r) < 0)
		return 2;

	char line[512];
	snprintf(line, sizeof line, "READY pid=%d pages=%zu base=%p\n", (int)getpid(), r.pages, (void *)r.base);
	if (report(ready, line) < 0)
		return 2;

	wait_for_wake();

	struct outcome out;
	mode_run(&o, &r, &out);
	const struct verdict *v = &out.verdict;
	int ok = v->bad == 0 && out.child_failures == 0 && v->checked > 0;
	if (ok)
		snprintf(line, sizeof line, "OK mode=%s pid=%d pages=%zu checked=%zu processes=%d %s\n", o.mode,
			 (int)getpid(), r.pages, v->checked, out.processes, out.detail);
	else
		snprintf(line, sizeof line,
			 "FAIL mode=%s pid=%d pages=%zu checked=%zu bad=%zu first_page=%zu byte=%zu expected=0x%02x "
			 "got=0x%02x child_failures=%d %s\n",
			 o.mode, (int)getpid(), r.pages, v->checked, v->bad, v->first_page, v->first_byte, v->expected,
			 v->got, out.child_failures, out.detail);
	if (report(result, line) < 0)
		return 2;
	return ok ? 0 : 1;
}
