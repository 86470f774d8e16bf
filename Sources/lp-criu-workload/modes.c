/*
 * lp-criu-workload: the modes. Each has a part before the dump (mode_prepare: processes, threads, zombies) and a
 * part after the restore's wake-up signal (mode_run: check every byte, fold in the descendants' results).
 *
 *   idle     one process; checks its pages in address order.
 *   random   one process; checks its pages in a random order (seeded).
 *   fork     on wake-up, before touching anything, forks --children children, each of which forks a grandchild at
 *            once (so they fork while every page is still missing, as zdtm's transition/fork does); every process
 *            checks all pages in its own random order, then rewrites a third of them with its own pattern (copy on
 *            write) and checks all again; the parent checks its own copy is untouched after they exit.
 *   zombie   before the dump, forks --children children that exit at once (status 40, 41, ...) and are left
 *            unreaped, so the dump holds zombies; on wake-up checks the pages, then reaps each zombie and checks its
 *            exit status.
 *   threads  before the dump, starts --threads threads blocked in read(2) on a pipe; on wake-up releases them all
 *            at once and each checks an interleaved share of the pages (page i goes to thread i % threads), in a
 *            random order, concurrently.
 *   tree     before the dump, forks --children children, each of which forks a grandchild; each descendant rewrites
 *            every other page with its own pattern, so each process of the tree holds different memory; the whole
 *            process group is woken and each checks its own pages, a parent folding in its child's exit status.
 *   guard    before the dump, maps a second region of GUARD_PAGES pages, writes a pattern into it and installs
 *            madvise(MADV_GUARD_INSTALL) guards on its odd pages (CRIU 4.2 dumps them as extra, out-of-order VMA
 *            entries: zdtm maps12); on wake-up checks the main pages, the even pages of that region, and that every
 *            odd one still faults (SIGSEGV).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "criu_workload.h"

#define MAX_KIDS 64
#define MAX_THREADS 64

static pid_t kids[MAX_KIDS];
static int kid_count;

static int ready_pipe[2] = {-1, -1};
static int release_pipe[2] = {-1, -1};
static pthread_t thread_ids[MAX_THREADS];
struct thread_job {
	const struct region *r;
	uint64_t seed;
	size_t stride, lane;
	struct verdict verdict;
};
static struct thread_job jobs[MAX_THREADS];

void wait_for_wake(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	while (sigwaitinfo(&set, NULL) < 0 && errno == EINTR)
		;
}

/* Waits for `pid` and returns 0 if it exited with `expected`, 1 otherwise (noted on stderr). */
static int reap(pid_t pid, int expected)
{
	int status = 0;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			note("waitpid %d: %s", (int)pid, strerror(errno));
			return 1;
		}
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == expected)
		return 0;
	if (WIFEXITED(status))
		note("child %d exited with %d, expected %d", (int)pid, WEXITSTATUS(status), expected);
	else
		note("child %d killed by signal %d", (int)pid, WTERMSIG(status));
	return 1;
}

static void note_verdict(const char *who, const struct verdict *v)
{
	if (v->bad)
		note("%s: %zu of %zu pages wrong; first: page %zu byte %zu expected 0x%02x got 0x%02x", who, v->bad,
		     v->checked, v->first_page, v->first_byte, v->expected, v->got);
}

/* ---- fork ---------------------------------------------------------------------------------------------------- */

/* One forked process: checks, rewrites a third of its pages, checks again; exits 0 or 1. */
static void forked_process(const struct region *r, uint64_t seed, int id)
{
	uint64_t own = seed ^ mix64(0xf0f0 + (uint64_t)id);
	struct verdict first, second;
	region_verify(r, seed, 1, 0, own | 1, &first);
	note_verdict("forked child before writing", &first);
	region_rewrite(r, own, 3, (size_t)id % 3);
	region_verify_mixed(r, seed, own, 3, (size_t)id % 3, own + 7, &second);
	note_verdict("forked child after writing", &second);
	_exit(first.bad || second.bad ? 1 : 0);
}

static void run_fork(const struct options *o, const struct region *r, struct outcome *out)
{
	for (int c = 0; c < o->children && c < MAX_KIDS; c++) {
		pid_t pid = fork();
		if (pid == 0) {
			pid_t grandchild = fork();
			if (grandchild == 0)
				forked_process(r, o->seed, 100 + c);
			int failed = grandchild < 0;
			struct verdict first, second;
			uint64_t own = o->seed ^ mix64(0xf0f0 + (uint64_t)c);
			region_verify(r, o->seed, 1, 0, own | 1, &first);
			region_rewrite(r, own, 3, (size_t)c % 3);
			region_verify_mixed(r, o->seed, own, 3, (size_t)c % 3, own + 7, &second);
			note_verdict("forked child", &first);
			note_verdict("forked child after writing", &second);
			if (grandchild > 0)
				failed |= reap(grandchild, 0);
			_exit(failed || first.bad || second.bad ? 1 : 0);
		}
		if (pid < 0) {
			note("fork: %s", strerror(errno));
			out->child_failures++;
			continue;
		}
		kids[kid_count++] = pid;
	}
	struct verdict v;
	region_verify(r, o->seed, 1, 0, 0, &v);
	verdict_merge(&out->verdict, &v);
	for (int k = 0; k < kid_count; k++)
		out->child_failures += reap(kids[k], 0);
	region_verify(r, o->seed, 1, 0, o->seed | 1, &v);
	note_verdict("parent after its children wrote theirs", &v);
	verdict_merge(&out->verdict, &v);
	out->processes = 1 + 2 * kid_count;
	snprintf(out->detail, sizeof out->detail, "children=%d grandchildren=%d", kid_count, kid_count);
}

/* ---- zombie -------------------------------------------------------------------------------------------------- */

static int prepare_zombies(const struct options *o)
{
	for (int c = 0; c < o->children && c < MAX_KIDS; c++) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(40 + c);
		if (pid < 0) {
			note("fork: %s", strerror(errno));
			return -1;
		}
		kids[kid_count++] = pid;
		/* Wait until it is a zombie, without reaping it. */
		siginfo_t info;
		while (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) < 0) {
			if (errno != EINTR) {
				note("waitid %d: %s", (int)pid, strerror(errno));
				return -1;
			}
		}
	}
	return 0;
}

static void run_zombie(const struct options *o, const struct region *r, struct outcome *out)
{
	struct verdict v;
	region_verify(r, o->seed, 1, 0, 0, &v);
	verdict_merge(&out->verdict, &v);
	for (int k = 0; k < kid_count; k++)
		out->child_failures += reap(kids[k], 40 + k);
	out->processes = 1;
	snprintf(out->detail, sizeof out->detail, "zombies=%d", kid_count);
}

/* ---- threads ------------------------------------------------------------------------------------------------- */

static void *thread_main(void *arg)
{
	struct thread_job *job = arg;
	char byte;
	while (read(release_pipe[0], &byte, 1) < 0 && errno == EINTR)
		;
	region_verify(job->r, job->seed, job->stride, job->lane, job->seed + job->lane + 1, &job->verdict);
	return NULL;
}

static int prepare_threads(const struct options *o, const struct region *r)
{
	if (pipe(release_pipe) < 0)
		return -1;
	int n = o->threads < MAX_THREADS ? o->threads : MAX_THREADS;
	for (int t = 0; t < n; t++) {
		jobs[t] = (struct thread_job){.r = r, .seed = o->seed, .stride = (size_t)n, .lane = (size_t)t};
		int rc = pthread_create(&thread_ids[t], NULL, thread_main, &jobs[t]);
		if (rc) {
			note("pthread_create: %s", strerror(rc));
			return -1;
		}
	}
	return 0;
}

static void run_threads(const struct options *o, struct outcome *out)
{
	int n = o->threads < MAX_THREADS ? o->threads : MAX_THREADS;
	char bytes[MAX_THREADS];
	memset(bytes, 'g', sizeof bytes);
	if (write(release_pipe[1], bytes, (size_t)n) != n)
		note("releasing the threads: %s", strerror(errno));
	for (int t = 0; t < n; t++) {
		pthread_join(thread_ids[t], NULL);
		note_verdict("thread", &jobs[t].verdict);
		verdict_merge(&out->verdict, &jobs[t].verdict);
	}
	out->processes = 1;
	snprintf(out->detail, sizeof out->detail, "threads=%d", n);
}

/* ---- tree ---------------------------------------------------------------------------------------------------- */

static uint64_t tree_seed(uint64_t seed, int id) { return seed ^ mix64(0x72ee + (uint64_t)id); }

/* A descendant of the tree: its own pattern on every other page, ready, then a check when woken. */
static void tree_member(const struct region *r, uint64_t seed, int id, int grandchild_id)
{
	uint64_t own = tree_seed(seed, id);
	region_rewrite(r, own, 2, 0);
	pid_t child = -1;
	int failed = 0;
	if (grandchild_id >= 0) {
		int pipe_to_me[2];
		if (pipe(pipe_to_me) < 0)
			_exit(2);
		child = fork();
		if (child == 0) {
			close(pipe_to_me[0]);
			ready_pipe[1] = pipe_to_me[1];
			tree_member(r, seed, grandchild_id, -1);
		}
		close(pipe_to_me[1]);
		char byte;
		if (child < 0 || read(pipe_to_me[0], &byte, 1) != 1)
			failed = 1;
		close(pipe_to_me[0]);
	}
	char ok = 'r';
	if (write(ready_pipe[1], &ok, 1) != 1)
		_exit(2);
	close(ready_pipe[1]);
	wait_for_wake();
	struct verdict v;
	region_verify_mixed(r, seed, own, 2, 0, own | 1, &v);
	note_verdict("tree member", &v);
	if (child > 0)
		failed |= reap(child, 0);
	_exit(failed || v.bad ? 1 : 0);
}

static int prepare_tree(const struct options *o, const struct region *r)
{
	for (int c = 0; c < o->children && c < MAX_KIDS; c++) {
		if (pipe(ready_pipe) < 0)
			return -1;
		pid_t pid = fork();
		if (pid == 0) {
			close(ready_pipe[0]);
			tree_member(r, o->seed, 1 + c, 100 + c);
		}
		close(ready_pipe[1]);
		char byte;
		int got = pid > 0 ? (int)read(ready_pipe[0], &byte, 1) : -1;
		close(ready_pipe[0]);
		if (got != 1) {
			note("tree child %d did not get ready", c);
			return -1;
		}
		kids[kid_count++] = pid;
	}
	return 0;
}

static void run_tree(const struct options *o, const struct region *r, struct outcome *out)
{
	struct verdict v;
	region_verify(r, o->seed, 1, 0, o->seed | 1, &v);
	verdict_merge(&out->verdict, &v);
	for (int k = 0; k < kid_count; k++)
		out->child_failures += reap(kids[k], 0);
	out->processes = 1 + 2 * kid_count;
	snprintf(out->detail, sizeof out->detail, "children=%d grandchildren=%d", kid_count, kid_count);
}

/* ---- guard --------------------------------------------------------------------------------------------------- */

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#define GUARD_PAGES 16

static unsigned char *guarded;
static sigjmp_buf guard_jump;

static void guard_fault(int sig)
{
	(void)sig;
	siglongjmp(guard_jump, 1);
}

static unsigned char guard_byte(uint64_t seed, size_t page, size_t byte)
{
	return (unsigned char)mix64(seed ^ 0x67756172ULL ^ (page << 12 | byte));
}

static int prepare_guard(const struct options *o)
{
	void *p = mmap(NULL, GUARD_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	guarded = p;
	for (size_t i = 0; i < GUARD_PAGES; i++)
		for (size_t b = 0; b < PAGE; b++)
			guarded[i * PAGE + b] = guard_byte(o->seed, i, b);
	for (size_t i = 1; i < GUARD_PAGES; i += 2)
		if (madvise(guarded + i * PAGE, PAGE, MADV_GUARD_INSTALL) < 0) {
			note("madvise(MADV_GUARD_INSTALL): %s", strerror(errno));
			return -1;
		}
	return 0;
}

static void run_guard(const struct options *o, const struct region *r, struct outcome *out)
{
	struct verdict v;
	region_verify(r, o->seed, 1, 0, 0, &v);
	verdict_merge(&out->verdict, &v);
	int bad_data = 0, unguarded = 0;
	for (size_t i = 0; i < GUARD_PAGES; i += 2)
		for (size_t b = 0; b < PAGE; b++)
			bad_data += guarded[i * PAGE + b] != guard_byte(o->seed, i, b);
	struct sigaction sa = {.sa_handler = guard_fault}, old;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &old);
	for (size_t i = 1; i < GUARD_PAGES; i += 2) {
		if (sigsetjmp(guard_jump, 1) == 0) {
			volatile unsigned char c = guarded[i * PAGE];
			(void)c;
			unguarded++; /* the read came back: the guard is gone */
		}
	}
	sigaction(SIGSEGV, &old, NULL);
	out->processes = 1;
	out->child_failures += bad_data || unguarded;
	snprintf(out->detail, sizeof out->detail, "guard_bad_bytes=%d unguarded=%d", bad_data, unguarded);
}

/* ---- dispatch ------------------------------------------------------------------------------------------------ */

int mode_prepare(const struct options *o, struct region *r)
{
	if (!strcmp(o->mode, "zombie"))
		return prepare_zombies(o);
	if (!strcmp(o->mode, "threads"))
		return prepare_threads(o, r);
	if (!strcmp(o->mode, "tree"))
		return prepare_tree(o, r);
	if (!strcmp(o->mode, "guard"))
		return prepare_guard(o);
	if (!strcmp(o->mode, "idle") || !strcmp(o->mode, "random") || !strcmp(o->mode, "fork"))
		return 0;
	note("unknown mode %s (idle, random, fork, zombie, threads, tree, guard)", o->mode);
	return -1;
}

void mode_run(const struct options *o, const struct region *r, struct outcome *out)
{
	memset(out, 0, sizeof *out);
	if (!strcmp(o->mode, "fork"))
		return run_fork(o, r, out);
	if (!strcmp(o->mode, "zombie"))
		return run_zombie(o, r, out);
	if (!strcmp(o->mode, "threads"))
		return run_threads(o, out);
	if (!strcmp(o->mode, "tree"))
		return run_tree(o, r, out);
	if (!strcmp(o->mode, "guard"))
		return run_guard(o, r, out);
	struct verdict v;
	region_verify(r, o->seed, 1, 0, !strcmp(o->mode, "random") ? o->seed | 1 : 0, &v);
	verdict_merge(&out->verdict, &v);
	out->processes = 1;
	snprintf(out->detail, sizeof out->detail, "order=%s", !strcmp(o->mode, "random") ? "random" : "linear");
}
