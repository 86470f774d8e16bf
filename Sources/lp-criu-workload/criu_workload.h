/* lp-criu-workload: shared declarations (see main.c for the program's contract). */
#ifndef LP_CRIU_WORKLOAD_H
#define LP_CRIU_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PAGE 4096UL

/* The process's patterned memory: one anonymous private mapping of `pages` pages. */
struct region {
	unsigned char *base;
	size_t pages;
};

/* What a verification found: how many pages were wrong and where the first one was. */
struct verdict {
	size_t checked;
	size_t bad;
	size_t first_page;  /* valid when bad > 0 */
	size_t first_byte;
	unsigned expected;
	unsigned got;
};

/* memory.c */
int region_map(struct region *r, size_t mib);
void region_fill(const struct region *r, uint64_t seed);
/* Pages that `seed` leaves untouched (never written, so CRIU dumps no data for them): they must read zeros. */
int page_is_hole(uint64_t seed, size_t page);
/* Checks pages [0, pages) whose index modulo `stride` is `lane`, in linear order or (order_seed != 0) in a
 * random order drawn from order_seed. */
void region_verify(const struct region *r, uint64_t seed, size_t stride, size_t lane, uint64_t order_seed,
		   struct verdict *out);
/* Rewrites the pages whose index modulo `stride` is `lane` with `seed`'s pattern (holes included). */
void region_rewrite(const struct region *r, uint64_t seed, size_t stride, size_t lane);
/* Like region_verify, but page i is expected under seed_b when i % stride == lane, under seed_a otherwise. */
void region_verify_mixed(const struct region *r, uint64_t seed_a, uint64_t seed_b, size_t stride, size_t lane,
			 uint64_t order_seed, struct verdict *out);
void verdict_merge(struct verdict *into, const struct verdict *from);
uint64_t mix64(uint64_t x);

/* modes.c: every mode prepares before the dump and runs after the restore's wake-up signal. */
struct options {
	const char *mode;
	size_t mib;
	uint64_t seed;
	int children;
	int threads;
};

struct outcome {
	int processes;          /* processes (or threads) whose memory was checked */
	struct verdict verdict; /* every check, merged */
	int child_failures;     /* children whose own check or exit status was wrong */
	char detail[256];
};

int mode_prepare(const struct options *o, struct region *r);
void mode_run(const struct options *o, const struct region *r, struct outcome *out);
/* Blocks until SIGUSR1 (blocked by main before anything forks, so every descendant inherits the mask). */
void wait_for_wake(void);
/* Writes `line` to stderr, prefixed with the program's name and pid. */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
