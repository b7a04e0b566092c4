#include "internal.h"

struct wmat_arena {
    unsigned char *base;
    size_t cap;
    size_t used;
};

int wmat_arena_create(wmat_arena **out, size_t capacity)
{
    *out = NULL;
    wmat_arena *a = wmat__calloc(1, sizeof *a);
    if (!a) return wmat_set_error(WMAT_ERR_NOMEM, "arena: out of memory");
    a->base = wmat__aligned_alloc(capacity);
    if (!a->base) {
        wmat__free(a);
        return wmat_set_error(WMAT_ERR_NOMEM, "arena: cannot allocate %zu bytes", capacity);
    }
    a->cap = capacity;
    *out = a;
    return WMAT_OK;
}

void wmat_arena_free(wmat_arena *a)
{
    if (!a) return;
    wmat__free(a->base);
    wmat__free(a);
}

void *wmat_arena_alloc(wmat_arena *a, size_t bytes)
{
    size_t start = (a->used + WMAT_ALIGN - 1) / WMAT_ALIGN * WMAT_ALIGN;
    if (start > a->cap || bytes > a->cap - start) {
        wmat_set_error(WMAT_ERR_NOMEM, "arena full: %zu of %zu bytes used, %zu more requested",
                       a->used, a->cap, bytes);
        return NULL;
    }
    a->used = start + bytes;
    return a->base + start;
}

size_t wmat_arena_used(const wmat_arena *a) { return a->used; }
size_t wmat_arena_capacity(const wmat_arena *a) { return a->cap; }
void wmat_arena_reset(wmat_arena *a) { a->used = 0; }
