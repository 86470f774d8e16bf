/* lp-workload: the expectation model (what each tracked page must read as), updated by the scenario's own
 * mremap/madvise/munmap calls exactly as the kernel changes the address space. */
#include <stdlib.h>
#include <string.h>

#include "workload.h"

static struct segment *push(struct model *m, uint64_t addr, uint64_t npages) {
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->segs = realloc(m->segs, m->cap * sizeof *m->segs);
        if (!m->segs) die("out of memory");
    }
    struct segment *s = &m->segs[m->n++];
    s->addr = addr;
    s->npages = npages;
    s->exp = malloc((npages ? npages : 1) * sizeof(uint64_t));
    if (!s->exp) die("out of memory");
    return s;
}

static struct segment *find(struct model *m, uint64_t addr) {
    for (size_t i = 0; i < m->n; i++)
        if (addr >= m->segs[i].addr && addr < m->segs[i].addr + m->segs[i].npages * LP_PAGE) return &m->segs[i];
    return NULL;
}

/* Makes `addr` a segment boundary if it falls inside one. */
static void split_at(struct model *m, uint64_t addr) {
    struct segment *s = find(m, addr);
    if (!s || s->addr == addr) return;
    uint64_t head = (addr - s->addr) / LP_PAGE;
    size_t index = (size_t)(s - m->segs);
    struct segment *t = push(m, addr, m->segs[index].npages - head);
    s = &m->segs[index]; /* push may have moved the array */
    memcpy(t->exp, s->exp + head, t->npages * sizeof(uint64_t));
    s->npages = head;
}

void model_add(struct model *m, uint64_t addr, uint64_t npages, uint64_t exp) {
    for (uint64_t i = 0; i < npages; i++)
        if (find(m, addr + i * LP_PAGE)) die("model: page 0x%llx added twice", (unsigned long long)(addr + i * LP_PAGE));
    struct segment *s = push(m, addr, npages);
    for (uint64_t i = 0; i < npages; i++) s->exp[i] = exp;
}

void model_set(struct model *m, uint64_t addr, uint64_t exp) {
    struct segment *s = find(m, addr);
    if (!s) die("model: page 0x%llx is not tracked", (unsigned long long)addr);
    s->exp[(addr - s->addr) / LP_PAGE] = exp;
}

static int inside(const struct segment *s, uint64_t addr, uint64_t len) {
    return s->addr >= addr && s->addr < addr + len;
}

void model_remove(struct model *m, uint64_t addr, uint64_t len) {
    split_at(m, addr);
    split_at(m, addr + len);
    for (size_t i = 0; i < m->n;) {
        if (inside(&m->segs[i], addr, len)) {
            free(m->segs[i].exp);
            m->segs[i] = m->segs[--m->n];
        } else {
            i++;
        }
    }
}

void model_zero(struct model *m, uint64_t addr, uint64_t len) {
    split_at(m, addr);
    split_at(m, addr + len);
    for (size_t i = 0; i < m->n; i++)
        if (inside(&m->segs[i], addr, len))
            for (uint64_t k = 0; k < m->segs[i].npages; k++) m->segs[i].exp[k] = EXP_ZERO;
}

void model_move(struct model *m, uint64_t from, uint64_t len, uint64_t to) {
    if (from == to) return;
    split_at(m, from);
    split_at(m, from + len);
    /* mremap(MREMAP_FIXED) unmaps whatever was at the target first. */
    size_t moving = 0;
    for (size_t i = 0; i < m->n; i++)
        if (inside(&m->segs[i], from, len)) {
            m->segs[i].addr = m->segs[i].addr - from + to + (1ULL << 63); /* parked out of the way */
            moving++;
        }
    if (moving) model_remove(m, to, len);
    for (size_t i = 0; i < m->n; i++)
        if (m->segs[i].addr >= (1ULL << 63)) m->segs[i].addr -= (1ULL << 63);
}

size_t model_pages(const struct model *m) {
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) n += m->segs[i].npages;
    return n;
}

static int by_addr(const void *a, const void *b) {
    uint64_t x = ((const struct page_ref *)a)->addr, y = ((const struct page_ref *)b)->addr;
    return x < y ? -1 : x > y;
}

struct page_ref *model_flatten(const struct model *m, size_t *count) {
    size_t n = model_pages(m), k = 0;
    struct page_ref *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) die("out of memory");
    for (size_t i = 0; i < m->n; i++)
        for (uint64_t j = 0; j < m->segs[i].npages; j++)
            out[k++] = (struct page_ref){m->segs[i].addr + j * LP_PAGE, m->segs[i].exp[j]};
    qsort(out, n, sizeof *out, by_addr);
    *count = n;
    return out;
}

struct segment *model_largest(struct model *m, struct segment *besides) {
    struct segment *best = NULL;
    for (size_t i = 0; i < m->n; i++)
        if (&m->segs[i] != besides && (!best || m->segs[i].npages > best->npages)) best = &m->segs[i];
    return best;
}
