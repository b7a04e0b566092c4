/* Allocation and I/O entry points, with optional fault injection (SQLite's
 * habit): a test build arms a countdown and the n-th call fails. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifdef WMAT_FAULT_INJECTION
/* The n-th call fails: calls are counted atomically, since analysis and the
 * methods allocate from OpenMP threads (a plain counter lost increments and
 * the failing call's number no longer matched the count). */
static long g_alloc_fail_at = -1, g_io_fail_at = -1;
static long g_alloc_calls, g_io_calls;

void wmat__fault_arm(long alloc_countdown, long io_countdown)
{
    __atomic_store_n(&g_alloc_calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_io_calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_alloc_fail_at, alloc_countdown, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_io_fail_at, io_countdown, __ATOMIC_SEQ_CST);
}
long wmat__fault_alloc_calls(void) { return __atomic_load_n(&g_alloc_calls, __ATOMIC_SEQ_CST); }
long wmat__fault_io_calls(void) { return __atomic_load_n(&g_io_calls, __ATOMIC_SEQ_CST); }

static bool alloc_fails(void)
{
    const long k = __atomic_add_fetch(&g_alloc_calls, 1, __ATOMIC_SEQ_CST);
    const long at = __atomic_load_n(&g_alloc_fail_at, __ATOMIC_SEQ_CST);
    return at > 0 && k == at;
}
bool wmat__fault_io(void)
{
    const long k = __atomic_add_fetch(&g_io_calls, 1, __ATOMIC_SEQ_CST);
    const long at = __atomic_load_n(&g_io_fail_at, __ATOMIC_SEQ_CST);
    return at > 0 && k == at;
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

/* Large buffers (a 1.1B layer's weights, GPTQ's n x n factors: tens to
 * hundreds of MB, allocated and freed per matrix) on transparent huge
 * pages. glibc serves them from fresh mappings, so every use pays one
 * page fault per 4 KB, and on the virtual machines measured here a fault
 * costs far more than the zeroing (bench_gptq, one thread: the float
 * factorization of a 5632-input H 1.56 -> 1.00 s, most of the difference
 * faults). Aligned to 2 MB and advised, the kernel maps 2 MB pages where
 * the system allows it ("madvise" mode, Debian's default); where it does
 * not, the advice is ignored and nothing else changes. */
#define WMAT_HUGE_MIN ((size_t)8 << 20)
#define WMAT_HUGE_PAGE ((size_t)2 << 20)

void *wmat__malloc(size_t n)
{
    if (alloc_fails()) return NULL;
#ifdef MADV_HUGEPAGE
    if (n >= WMAT_HUGE_MIN) {
        void *p = NULL;
        if (posix_memalign(&p, WMAT_HUGE_PAGE, n)) return NULL;
        (void)madvise(p, (n + WMAT_HUGE_PAGE - 1) & ~(WMAT_HUGE_PAGE - 1), MADV_HUGEPAGE);
        return p;
    }
#endif
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
