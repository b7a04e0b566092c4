/* Out of core (docs/SCALING.md): a finished weight leaves memory for a
 * temporary file and comes back as a read-only mapping of it, so a model
 * that is quantized block by block is never resident whole; a writer then
 * reads each weight from the page cache and releases its pages
 * (wmat__model_release), as it does for weights mapped from the input. */
#include "model_internal.h"
#include "wop/wop.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SPILL_ALIGN 64 /* every part starts aligned beyond its element size */

static size_t part_bytes(const wmat_wpart *p)
{
    const uint64_t n = (uint64_t)p->shape[0] * (uint64_t)(p->ndim == 2 ? p->shape[1] : 1);
    return (size_t)wmat_dtype_bytes(p->dtype, n);
}

/* The parts as the spill file holds them, for the kind's load(). */
typedef struct {
    const wmat_wpart *parts;
    const size_t *off;
    int n;
    const unsigned char *base;
    const char *what;
} spill_src;

static int spill_get(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    const spill_src *s = user;
    for (int i = 0; i < s->n; i++) {
        const wmat_wpart *p = &s->parts[i];
        if (strcmp(p->suffix, suffix)) continue;
        if (p->dtype != dtype || p->ndim != ndim || p->shape[0] != d0 || (ndim == 2 && p->shape[1] != d1))
            return wmat_set_error(WMAT_ERR_INTERNAL, "%s: part %s read back with another type or shape", s->what, suffix);
        *data = s->base + s->off[i];
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_INTERNAL, "%s: part %s was not written", s->what, suffix);
}

static int pwrite_all(int fd, const void *p, size_t n, size_t off, const char *what)
{
    const unsigned char *b = p;
    while (n) {
        const ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return wmat_set_error(WMAT_ERR_IO, "%s: cannot write the spill file: %s", what, k < 0 ? strerror(errno) : "no progress");
        b += k;
        n -= (size_t)k;
        off += (size_t)k;
    }
    return WMAT_OK;
}

/* A new file in dir, unlinked at once (its space goes with the last
 * descriptor or mapping, whatever happens); the descriptor, or a negative
 * status naming what and dir. */
static int unlinked_file(const char *dir, const char *what)
{
    const size_t dl = strlen(dir);
    char *path = wmat__malloc(dl + 32);
    if (!path) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    snprintf(path, dl + 32, "%s%s.wmat-spill-XXXXXX", dir, dl && dir[dl - 1] == '/' ? "" : "/");
    const int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        int rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot create a spill file in %s: %s", what, dir, strerror(e));
        wmat__free(path);
        return rc;
    }
    unlink(path);
    wmat__free(path);
    return fd;
}

/* parts -> a new unlinked file in dir, mapped read-only (*map, *off) */
static int spill_write(const wmat_wpart *parts, int np, const char *dir, const char *what, wmat_map *map, size_t *off)
{
    map->addr = NULL;
    map->len = 0;
    if (wmat__fault_io()) return wmat_set_error(WMAT_ERR_IO, "%s: cannot create a spill file: injected I/O fault", what);
    size_t total = 0;
    for (int i = 0; i < np; i++) {
        off[i] = total;
        total = (total + part_bytes(&parts[i]) + SPILL_ALIGN - 1) / SPILL_ALIGN * SPILL_ALIGN;
    }
    if (!total) return wmat_set_error(WMAT_ERR_INTERNAL, "%s: nothing to spill", what);
    const int fd = unlinked_file(dir, what);
    if (fd < 0) return fd;
    int rc = WMAT_OK;
    for (int i = 0; i < np && !rc; i++) rc = pwrite_all(fd, parts[i].data, part_bytes(&parts[i]), off[i], what);
    if (!rc && ftruncate(fd, (off_t)total) != 0)
        rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot size the spill file: %s", what, strerror(errno));
    if (!rc) {
        void *p = mmap(NULL, total, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot map the spill file: %s", what, strerror(errno));
        else {
            map->addr = p;
            map->len = total;
        }
    }
    close(fd);
    return rc;
}

int wmat__model_spill(wmat_model *m, wmat_tensor *t, const char *dir)
{
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    if (!t->data || !(t->flags & WMAT_TF_OWNED) || t->dtype == WMAT_F32) return WMAT_OK;
    const wmat_wkind *k = wmat__wkind_of(t);
    if (!k) return WMAT_OK;
    char what[WMAT_NAME_MAX + 64];
    snprintf(what, sizeof what, "%s: tensor %s", m->path ? m->path : "model", t->name);
    wmat_wpart parts[WMAT_WPART_MAX];
    size_t off[WMAT_WPART_MAX];
    int np = 0, rc;
    wmat_map map = {0};
    if (t->dtype != WMAT_OBJ) {
        /* a plain kind (ggml blocks): its bytes as one part */
        parts[np++] = (wmat_wpart){"", WMAT_U8, 1, {(int64_t)t->nbytes, 0}, t->data};
        if ((rc = spill_write(parts, np, dir, what, &map, off))) return rc;
        if ((rc = wmat__model_add_map(m, &map))) return rc;
        void *old = t->data;
        t->data = m->maps[m->n_maps - 1].addr;
        t->flags &= ~(uint32_t)WMAT_TF_OWNED;
        wmat__free(old);
        return WMAT_OK;
    }
    if (!k->save || !k->load) return WMAT_OK; /* a kind without files stays in memory */
    cJSON *desc = cJSON_CreateObject();
    if (!desc || !cJSON_AddStringToObject(desc, "kind", k->name)) {
        cJSON_Delete(desc);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    }
    rc = k->save(t, desc, parts, &np, what);
    if (!rc) rc = spill_write(parts, np, dir, what, &map, off);
    void *obj = NULL;
    if (!rc) {
        const spill_src src = {parts, off, np, map.addr, what};
        rc = k->load(desc, t->shape[0], t->shape[1], spill_get, (void *)&src, what, &obj);
    }
    cJSON_Delete(desc);
    if (!rc && (rc = wmat__model_add_map(m, &map))) k->free(obj); /* add_map unmapped it */
    if (rc) {
        wmat__unmap(&map);
        return rc;
    }
    wmat__tensor_set_obj(t, obj); /* frees the in-memory object */
    return WMAT_OK;
}

/* Scratch memory out of core: `bytes` of a new file in dir, unlinked at
 * once and reserved on disk (posix_fallocate: a full disk is an error
 * here, not a SIGBUS at a later page fault), mapped shared and writable.
 * The caller writes and reads it like memory and drops the pages it is
 * done with (wmat__pages_release): on a shared file mapping madvise's
 * MADV_DONTNEED only unmaps them, their contents stay in the page cache
 * (and go to the file), and the next access maps them again. */
int wmat__spill_scratch(const char *dir, size_t bytes, const char *what, wmat_map *out)
{
    out->addr = NULL;
    out->len = 0;
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    if (!bytes) return wmat_set_error(WMAT_ERR_INTERNAL, "%s: an empty scratch file", what);
    if (wmat__fault_io()) return wmat_set_error(WMAT_ERR_IO, "%s: cannot create a spill file: injected I/O fault", what);
    const int fd = unlinked_file(dir, what);
    if (fd < 0) return fd;
    int rc = WMAT_OK;
    const int e = posix_fallocate(fd, 0, (off_t)bytes);
    if (e)
        rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot reserve %zu MB for a spill file in %s: %s", what, bytes >> 20,
                            dir, strerror(e));
    if (!rc) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot map the spill file: %s", what, strerror(errno));
        else {
            out->addr = p;
            out->len = bytes;
        }
    }
    close(fd);
    return rc;
}
