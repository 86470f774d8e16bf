/* lp-criu-workload: the patterned memory — mapping, filling, rewriting and checking it byte for byte. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "criu_workload.h"

/* splitmix64's finaliser: a good 64-bit mix, cheap enough to fill hundreds of MiB. */
uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

int region_map(struct region *r, size_t mib)
{
	r->pages = mib * (1024 * 1024 / PAGE);
	void *p = mmap(NULL, r->pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	r->base = p;
	return 0;
}

int page_is_hole(uint64_t seed, size_t page)
{
	return mix64(seed ^ 0x686f6c65ULL ^ ((uint64_t)page << 20)) % 8 == 0;
}

/* The 8-byte word `word` of page `page` under `seed`. */
static uint64_t pattern_word(uint64_t seed, size_t page, size_t word)
{
	return mix64(seed * 0x100000001b3ULL ^ ((uint64_t)page << 9 | word));
}

static void fill_page(unsigned char *p, uint64_t seed, size_t page)
{
	uint64_t *w = (uint64_t *)p;
	for (size_t i = 0; i < PAGE / 8; i++)
		w[i] = pattern_word(seed, page, i);
}

void region_fill(const struct region *r, uint64_t seed)
{
	for (size_t i = 0; i < r->pages; i++)
		if (!page_is_hole(seed, i))
			fill_page(r->base + i * PAGE, seed, i);
}

void region_rewrite(const struct region *r, uint64_t seed, size_t stride, size_t lane)
{
	for (size_t i = lane; i < r->pages; i += stride) {
		if (page_is_hole(seed, i))
			memset(r->base + i * PAGE, 0, PAGE);
		else
			fill_page(r->base + i * PAGE, seed, i);
	}
}

/* Checks one page; records the first wrong byte in `out`. */
static void check_page(const struct region *r, uint64_t seed, size_t page, struct verdict *out)
{
	const unsigned char *p = r->base + page * PAGE;
	const uint64_t *w = (const uint64_t *)p;
	int hole = page_is_hole(seed, page);
	out->checked++;
	for (size_t i = 0; i < PAGE / 8; i++) {
		uint64_t want = hole ? 0 : pattern_word(seed, page, i);
		if (w[i] == want)
			continue;
		if (out->bad++ == 0) {
			size_t b = 0;
			const unsigned char *want_bytes = (const unsigned char *)&want;
			while (b < 8 && p[i * 8 + b] == want_bytes[b])
				b++;
			out->first_page = page;
			out->first_byte = i * 8 + b;
			out->expected = want_bytes[b];
			out->got = p[i * 8 + b];
		}
		return;
	}
}

/* Fisher–Yates over the selected page indices, driven by a xorshift64* generator seeded with order_seed. */
static size_t *page_order(size_t pages, size_t stride, size_t lane, uint64_t order_seed, size_t *count)
{
	size_t n = pages > lane ? (pages - lane + stride - 1) / stride : 0;
	size_t *order = malloc((n ? n : 1) * sizeof *order);
	if (!order)
		return NULL;
	for (size_t k = 0; k < n; k++)
		order[k] = lane + k * stride;
	uint64_t s = mix64(order_seed) | 1;
	for (size_t k = n; k > 1; k--) {
		s ^= s >> 12;
		s ^= s << 25;
		s ^= s >> 27;
		size_t j = (size_t)((s * 0x2545f4914f6cdd1dULL) % k);
		size_t t = order[k - 1];
		order[k - 1] = order[j];
		order[j] = t;
	}
	*count = n;
	return order;
}

void region_verify_mixed(const struct region *r, uint64_t seed_a, uint64_t seed_b, size_t stride, size_t lane,
			 uint64_t order_seed, struct verdict *out)
{
	memset(out, 0, sizeof *out);
	if (order_seed == 0) {
		for (size_t i = 0; i < r->pages; i++)
			check_page(r, i % stride == lane ? seed_b : seed_a, i, out);
		return;
	}
	size_t n = 0;
	size_t *order = page_order(r->pages, 1, 0, order_seed, &n);
	if (!order) {
		out->bad = out->checked = r->pages;
		return;
	}
	for (size_t k = 0; k < n; k++)
		check_page(r, order[k] % stride == lane ? seed_b : seed_a, order[k], out);
	free(order);
}

void region_verify(const struct region *r, uint64_t seed, size_t stride, size_t lane, uint64_t order_seed,
		   struct verdict *out)
{
	memset(out, 0, sizeof *out);
	if (order_seed == 0) {
		for (size_t i = lane; i < r->pages; i += stride)
			check_page(r, seed, i, out);
		return;
	}
	size_t n = 0;
	size_t *order = page_order(r->pages, stride, lane, order_seed, &n);
	if (!order) {
		out->bad = out->checked = n;
		return;
	}
	for (size_t k = 0; k < n; k++)
		check_page(r, seed, order[k], out);
	free(order);
}

void verdict_merge(struct verdict *into, const struct verdict *from)
{
	if (from->bad && !into->bad) {
		into->first_page = from->first_page;
		into->first_byte = from->first_byte;
		into->expected = from->expected;
		into->got = from->got;
	}
	into->checked += from->checked;
	into->bad += from->bad;
}
