/* Allocation and I/O entry points, with optional fault injection (SQLite's
 * habit): a test build arms a countdown and the n-th call fails. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#ifdef WMAT_FAULT_INJECTION
static long g_alloc_countdown = -1, g_io_countdown = -1;
static long g_alloc_calls, g_io_calls;

void wmat__fault_arm(long alloc_countdown, long io_countdown)
{
    g_alloc_countdown = alloc_countdown;
    g_io_countdown = io_countdown;
    g_alloc_calls = 0;
    g_io_calls = 0;
}
long wmat__fault_alloc_calls(void) { return g_alloc_calls; }
long wmat__fault_io_calls(void) { return g_io_calls; }

static bool alloc_fails(void)
{
    g_alloc_calls++;
    if (g_alloc_countdown > 0 && --g_alloc_countdown == 0) return true;
    return false;
}
bool wmat__fault_io(void)
{
    g_io_calls++;
    if (g_io_countdown > 0 && --g_io_countdown == 0) return true;
    return false;
}
#else
void wmat__fault_arm(long alloc_countdown, long io_countdown)
{
    (void)alloc_countdown;
    (void)io_countdown;
}
long wmat__fault_alloc_calls(void) { return 0; }
long wmat__fault_io_calls(void) { return 0; }
static inline bool alloc_fails(void) { return false; }
bool wmat__fault_io(void) { return false; }
#endif

void *wmat__malloc(size_t n)
{
    if (alloc_fails()) return NULL;
    return malloc(n ? n : 1);
}

void *wmat__calloc(size_t n, size_t size)
{
    if (alloc_fails()) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

void *wmat__realloc(void *p, size_t n)
{
    if (alloc_fails()) return NULL;
    return realloc(p, n ? n : 1);
}

void *wmat__aligned_alloc(size_t n)
{
    if (alloc_fails()) return NULL;
    size_t rounded = (n + WMAT_ALIGN - 1) / WMAT_ALIGN * WMAT_ALIGN;
    if (rounded < n) return NULL;
    void *p = aligned_alloc(WMAT_ALIGN, rounded ? rounded : WMAT_ALIGN);
    if (p) memset(p, 0, rounded);
    return p;
}

void wmat__free(void *p) { free(p); }

char *wmat__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = wmat__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
