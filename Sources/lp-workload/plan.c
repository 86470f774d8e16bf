/* lp-workload: reading the plan file (format in main.c) and opening the pages files it names. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define GROW(arr, n) ((arr) = realloc((arr), sizeof(*(arr)) * (size_t)((n) + 1)))

static uint64_t number(const char *text, const char *path, int line) {
    char *end;
    errno = 0;
    uint64_t v = strtoull(text, &end, 0);
    if (errno || *end || end == text) die("%s:%d: bad number '%s'", path, line, text);
    return v;
}

void plan_read(const char *path, struct plan *plan) {
    FILE *f = fopen(path, "re");
    if (!f) die("cannot open plan %s: %s", path, strerror(errno));
    memset(plan, 0, sizeof *plan);
    char buf[4096 + 64];
    int line = 0;
    while (fgets(buf, sizeof buf, f)) {
        line++;
        /* "file INDEX PATH": PATH is the rest of the line (it may hold blanks, not '#' or a newline). */
        if (!strncmp(buf, "file ", 5)) {
            char *end;
            long index = strtol(buf + 5, &end, 10);
            while (*end == ' ' || *end == '\t') end++;
            end[strcspn(end, "\r\n")] = 0;
            if (end == buf + 5 || !*end) die("%s:%d: expected 'file INDEX PATH'", path, line);
            if (index != plan->nfiles) die("%s:%d: files must be numbered 0, 1, ...", path, line);
            GROW(plan->files, plan->nfiles);
            plan->files[plan->nfiles++] = (struct pages_file){.path = strdup(end)};
            continue;
        }
        char *hash = strchr(buf, '#');
        if (hash) *hash = 0;
        char *word[6];
        int n = 0;
        for (char *save = NULL, *t = strtok_r(buf, " \t\r\n", &save); t && n < 6; t = strtok_r(NULL, " \t\r\n", &save))
            word[n++] = t;
        if (n == 0) continue;
        if (!strcmp(word[0], "task") && n == 2) {
            plan->vpid = (int)number(word[1], path, line);
        } else if (!strcmp(word[0], "vma") && n == 5) {
            GROW(plan->vmas, plan->nvmas);
            plan->vmas[plan->nvmas++] = (struct plan_vma){
                .start = number(word[1], path, line), .end = number(word[2], path, line),
                .prot = (uint32_t)number(word[3], path, line), .flags = (uint32_t)number(word[4], path, line)};
        } else if ((!strcmp(word[0], "lazy") || !strcmp(word[0], "eager")) && (n == 5 || n == 4)) {
            struct plan_run r = {.addr = number(word[1], path, line), .npages = number(word[2], path, line),
                                 .eager = !strcmp(word[0], "eager"), .file = -1};
            if (n == 4) {
                if (strcmp(word[3], "remote") || r.eager) die("%s:%d: expected 'INDEX OFFSET'", path, line);
            } else {
                r.file = (int)number(word[3], path, line);
                r.offset = number(word[4], path, line);
                if (r.file >= plan->nfiles) die("%s:%d: unknown file %d", path, line, r.file);
            }
            GROW(plan->runs, plan->nruns);
            plan->runs[plan->nruns++] = r;
        } else {
            die("%s:%d: cannot parse '%s'", path, line, word[0]);
        }
    }
    fclose(f);
    /* Attach runs to VMAs; check containment and alignment. */
    for (int i = 0; i < plan->nvmas; i++)
        if ((plan->vmas[i].start | plan->vmas[i].end) % LP_PAGE || plan->vmas[i].end <= plan->vmas[i].start)
            die("%s: bad vma 0x%llx-0x%llx", path, (unsigned long long)plan->vmas[i].start,
                (unsigned long long)plan->vmas[i].end);
    for (int i = 0; i < plan->nruns; i++) {
        struct plan_run *r = &plan->runs[i];
        struct plan_vma *home = NULL;
        for (int j = 0; j < plan->nvmas; j++)
            if (r->addr >= plan->vmas[j].start && r->addr + r->npages * LP_PAGE <= plan->vmas[j].end) home = &plan->vmas[j];
        if (!home || r->addr % LP_PAGE || r->offset % LP_PAGE || r->npages == 0)
            die("%s: run 0x%llx+%llu pages is not page-aligned inside one vma", path, (unsigned long long)r->addr,
                (unsigned long long)r->npages);
        if (r->eager) home->has_eager = 1;
        else home->has_lazy = 1;
    }
}

void plan_open_files(struct plan *plan) {
    for (int i = 0; i < plan->nfiles; i++) {
        struct pages_file *f = &plan->files[i];
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die("cannot open %s: %s", f->path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st)) die("fstat %s: %s", f->path, strerror(errno));
        f->size = (size_t)st.st_size;
        if (f->size) {
            void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) die("mmap %s: %s", f->path, strerror(errno));
            f->map = p;
        }
        close(fd);
    }
    for (int i = 0; i < plan->nruns; i++) {
        struct plan_run *r = &plan->runs[i];
        if (r->file >= 0 && r->offset + r->npages * LP_PAGE > plan->files[r->file].size)
            die("run 0x%llx+%llu pages reads past the end of %s", (unsigned long long)r->addr,
                (unsigned long long)r->npages, plan->files[r->file].path);
    }
}
