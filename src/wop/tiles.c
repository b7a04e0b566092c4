/* Batched products of a kind that can only dequantize rows (PB-LLM,
 * BitStack, the sparse kinds): tiles of rows dequantized into the caller's
 * workspace, each followed by a GEMM, one tile per thread. */
#include "wop.h"
#include "linalg/linalg.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ~256 KB of fp32 per tile: half of a 512 KB-1 MB L2, leaving room for the
 * GEMM's packed panels of X. */
#define TILE_BYTES (256u << 10)

static int64_t tile_rows(int64_t rows, int64_t cols)
{
    int64_t tr = (int64_t)(TILE_BYTES / ((size_t)cols * 4)) / 16 * 16;
    if (tr < 16) tr = 16;
    return tr < rows ? tr : rows;
}

/* + 64 bytes: each thread's tile starts on a cache line */
static size_t tile_floats(int64_t rows, int64_t cols) { return (size_t)tile_rows(rows, cols) * (size_t)cols + 16; }

static float *tile_of(int64_t rows, int64_t cols, void *ws, int t)
{
    const uintptr_t p = ((uintptr_t)ws + 63) & ~(uintptr_t)63;
    return (float *)p + (size_t)t * tile_floats(rows, cols);
}

size_t wmat__tiles_ws_bytes(int64_t rows, int64_t cols, const wmat_wexec *ex)
{
    const int nt = ex->n_threads > 1 ? ex->n_threads : 1;
    return (size_t)nt * tile_floats(rows, cols) * 4 + 64;
}

void wmat__tiles_forward(wmat_rows_dequant deq, const void *obj, int64_t rows, int64_t cols, const float *X, float *Y,
                         int T, int acc, void *ws, const wmat_wexec *ex)
{
    const int64_t tr = tile_rows(rows, cols), ntile = (rows + tr - 1) / tr;
    const int nt = ex->n_threads > 1 && ntile > 1 ? (ex->n_threads < ntile ? ex->n_threads : (int)ntile) : 1;
    /* one tile: the GEMM gets every thread; several: a thread per tile */
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *tile = tile_of(rows, cols, ws, t);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < ntile; i++) {
            const int64_t r0 = i * tr, nr = rows - r0 < tr ? rows - r0 : tr;
            deq(obj, r0, nr, tile);
            wmat__sgemm_cfg(ex->gemm, nt > 1 ? 1 : ex->n_threads, 0, 1, T, (int)nr, (int)cols, 1.0f, X, (int)cols, tile,
                            (int)cols, acc ? 1.0f : 0.0f, Y + r0, (int)rows);
        }
    }
}

/* dX = dY W: the tiles' contributions add up, so they run in turn, each
 * GEMM on every thread. */
void wmat__tiles_backward(wmat_rows_dequant deq, const void *obj, int64_t rows, int64_t cols, const float *dY, float *dX,
                          int T, int acc, void *ws, const wmat_wexec *ex)
{
    const int64_t tr = tile_rows(rows, cols);
    float *tile = tile_of(rows, cols, ws, 0);
    for (int64_t r0 = 0; r0 < rows; r0 += tr) {
        const int64_t nr = rows - r0 < tr ? rows - r0 : tr;
        deq(obj, r0, nr, tile);
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)cols, (int)nr, 1.0f, dY + r0, (int)rows, tile, (int)cols,
                        r0 == 0 && !acc ? 0.0f : 1.0f, dX, (int)cols);
    }
}
