/* lp-workload: shared declarations. See main.c for the plan format and the scenarios. */
#ifndef LP_WORKLOAD_H
#define LP_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LP_PAGE 4096UL

/* An expectation for one page: image data (file index << 40 | page index in that file), zeros, or anything
 * (data that lives on a page server, which the workload cannot read). */
#define EXP_ZERO UINT64_MAX
#define EXP_ANY (UINT64_MAX - 1)
#define EXP_FILE(file, page) (((uint64_t)(file) << 40) | (uint64_t)(page))

struct pages_file {
    char *path;
    const uint8_t *map; /* whole file, read-only */
    size_t size;
};

struct plan_vma {
    uint64_t start, end;
    uint32_t prot, flags;
    int has_lazy, has_eager;
    int mapped; /* mapped in this process (0: not needed, or it collided) */
};

struct plan_run {
    uint64_t addr, npages;
    int eager;   /* 1: filled by us before registering; 0: the daemon's to deliver */
    int file;    /* index into files, or -1 for remote data */
    uint64_t offset;
};

struct plan {
    int vpid;
    struct pages_file *files;
    int nfiles;
    struct plan_vma *vmas;
    int nvmas;
    struct plan_run *runs;
    int nruns;
};

/* The expectation model: what each page of the process's tracked memory must read as, kept up to date by the
 * scenario's own mremap/madvise/munmap calls. Segments never overlap; their order is arbitrary. */
struct segment {
    uint64_t addr, npages;
    uint64_t *exp;
};

struct model {
    struct segment *segs;
    size_t n, cap;
};

struct page_ref {
    uint64_t addr, exp;
};

/* Global context (set up once in main, copied into forked children). */
extern struct plan g_plan;
extern struct model g_model;
extern const char *g_scenario;
extern uint64_t g_seed;
extern int g_control_fd; /* fd 3: the socket to the simulator */

/* main.c */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* plan.c */
void plan_read(const char *path, struct plan *plan);
void plan_open_files(struct plan *plan);

/* model.c */
void model_add(struct model *m, uint64_t addr, uint64_t npages, uint64_t exp);
void model_set(struct model *m, uint64_t addr, uint64_t exp);
void model_remove(struct model *m, uint64_t addr, uint64_t len);
void model_zero(struct model *m, uint64_t addr, uint64_t len);
void model_move(struct model *m, uint64_t from, uint64_t len, uint64_t to);
size_t model_pages(const struct model *m);
struct page_ref *model_flatten(const struct model *m, size_t *count); /* address order */
struct segment *model_largest(struct model *m, struct segment *besides);

/* verify.c */
struct rng {
    uint64_t state;
};
uint64_t rng_next(struct rng *r);
uint64_t rng_below(struct rng *r, uint64_t n);
void shuffle(struct rng *r, struct page_ref *pages, size_t n);
/* Checks one page byte for byte; counts it; prints a FAIL line on mismatch (a few per process). */
int verify_page(uint64_t addr, uint64_t exp);
size_t verify_list(const struct page_ref *pages, size_t n);
void verify_reset_counters(void);
uint64_t verified_pages(void);
uint64_t failed_pages(void);
const char *describe_exp(uint64_t exp, char *buf, size_t size);

/* Bytes the workload itself wrote into a page (read(2) into it, a stamp): verify_page expects the page's model
 * expectation with these bytes laid over it. Only for pages that are not moved or dropped afterwards. */
void patch_add(uint64_t addr, size_t offset, const void *bytes, size_t len);

/* scenarios.c */
int run_scenario(const char *name);
/* Helpers the scenario files share (scenarios.c). */
struct rng rng_for(uint64_t salt);
int finish(uint64_t extra_failures, const char *role, const char *details);
int verify_all(uint64_t salt);
void touch_some(struct rng *r, uint64_t addr, uint64_t npages, uint64_t count);
void *reserve(uint64_t len);
uint64_t move_fixed(uint64_t from, uint64_t len, uint64_t to);
uint64_t grow(uint64_t addr, uint64_t len, uint64_t extra);
struct segment *need_largest(uint64_t min_pages);
int wait_children(const pid_t *pids, int n);
void check_random(struct rng *r, const struct page_ref *all, size_t n, int count);

/* reliability_scenarios.c */
int scenario_uffd_events(void);
int scenario_fork2_storm(void);
int scenario_fork_exit_early(void);
int scenario_lazy_thp(void);
int scenario_many_vmas(void);
int scenario_sparse_huge(void);
int scenario_kernel_faults(void);

#endif
