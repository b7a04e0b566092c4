#include "linear.h"

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int wmat__linear_supported(const wmat_tensor *W) { return wmat__wkind_of(W) != NULL; }

void wmat__linear_batch(float *Y, const float *X, const wmat_tensor *W, int T, int accumulate, void *ws,
                        const wmat_wexec *ex)
{
    wmat__wkind_of(W)->forward(W, X, Y, T, accumulate, ws, ex);
}

/* Thread t of nt: rows [g0, g1) of the concatenated rows of the n weights. */
static void vec_part(int n, float *const *y, const float *x, const wmat_tensor *const *W, const wmat_wkind *const *k,
                     int accumulate, void *const *prep, const wmat_wexec *ex, int t, int nt)
{
    int total = 0, g0, g1;
    for (int i = 0; i < n; i++) total += (int)W[i]->shape[0];
    wmat__matvec_part_range(total, t, nt, &g0, &g1);
    int base = 0;
    for (int i = 0; i < n; i++) {
        const int rows = (int)W[i]->shape[0];
        const int a = g0 > base ? g0 - base : 0, b = g1 - base < rows ? g1 - base : rows;
        if (a < b) k[i]->rows(W[i], x, prep[i], y[i], a, b, accumulate, ex);
        base += rows;
    }
}

void wmat__linear_vec_multi(int n, float *const *y, const float *x, const wmat_tensor *const *W, int accumulate,
                            void *const *prep, const wmat_wexec *ex)
{
    const wmat_wkind *k[4];
    long work = 0;
    for (int i = 0; i < n; i++) {
        k[i] = wmat__wkind_of(W[i]);
        if (k[i]->prep_bytes(W[i], ex)) k[i]->prepare(W[i], x, prep[i], ex);
        work += (long)W[i]->shape[0] * (long)W[i]->shape[1];
    }
    /* threads only pay off above ~64K multiply-adds (fork/join costs ~µs) */
    const int nt = work >= 65536 ? ex->n_threads : 1;
    if (nt <= 1) {
        vec_part(n, y, x, W, k, accumulate, prep, ex, 0, 1);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        vec_part(n, y, x, W, k, accumulate, prep, ex, t, T);
    }
}
