/* Monarch weights (src/wop/kind_monarch.c), and low-rank weights
 * (kind_lowrank.c) at the same parameter shares, against dense fp32 in the
 * same run: decode (one input vector through the one-row path, rows split over
 * threads as the runtime does) and a batched forward of T rows, on
 * TinyLlama-1.1B's layer shapes, at several block counts.
 *
 *   bench_monarch [--threads N] [--T 256] [--budget S]
 *
 * Every weight is cycled through copies spanning >= 256 MB so that each
 * call streams it from memory (decode is bound by bytes). Prints times,
 * the speedup over fp32 and the parameter share b (m + n) / (m n).
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "wop/wop.h"

#define SPAN ((size_t)256 << 20)

static double now(void) { return omp_get_wtime(); }

typedef struct {
    int n;
    wmat_tensor *w;
} copies;

static void make_copies(copies *c, const wmat_wkind *k, const float *W, int64_t rows, int64_t cols, int64_t blocks,
                        int64_t K)
{
    const size_t one = blocks > 0   ? (size_t)(K * blocks * (rows + cols)) * 4
                       : blocks < 0 ? (size_t)(K * (rows + cols)) * 4
                                    : (size_t)(rows * cols) * 4;
    c->n = (int)(SPAN / one) + 1;
    if (c->n > 64) c->n = 64;
    c->w = calloc((size_t)c->n, sizeof(wmat_tensor));
    for (int i = 0; i < c->n; i++) {
        if (!blocks) {
            if (k->from_f32(W, rows, cols, &c->w[i])) abort();
            continue;
        }
        if (blocks < 0) { /* low-rank of rank K */
            void *obj = NULL;
            if (wmat__lowrank_create(WMAT_F32, rows, cols, K, W, W, &obj)) abort();
            wmat__tensor_own_obj(&c->w[i], rows, cols, obj);
            continue;
        }
        float *w1 = malloc(sizeof(float) * (size_t)(K * blocks * cols)), *w2 = malloc(sizeof(float) * (size_t)(K * blocks * rows));
        for (int64_t q = 0; q < K * blocks * cols; q++) w1[q] = W[q % (rows * cols)];
        for (int64_t q = 0; q < K * blocks * rows; q++) w2[q] = W[(q * 7) % (rows * cols)];
        void *obj = NULL;
        if (wmat__monarch_create(rows, cols, blocks, blocks, K, w1, w2, &obj)) abort();
        wmat__tensor_own_obj(&c->w[i], rows, cols, obj);
        free(w1), free(w2);
    }
}

static void free_copies(copies *c)
{
    for (int i = 0; i < c->n; i++) wmat__tensor_free_data(&c->w[i]);
    free(c->w);
}

/* best seconds per call over the budget, calls cycling through the copies */
static double time_decode(copies *c, const float *x, float *y, const wmat_wexec *ex, double budget)
{
    double best = 1e30;
    const double end = now() + budget;
    for (int i = 0; i < 5 || now() < end; i++) {
        const double t0 = now();
        wmat__wop_matvec(&c->w[i % c->n], x, y, 0, ex);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static double time_batch(copies *c, const float *X, float *Y, int T, const wmat_wexec *ex, double budget)
{
    double best = 1e30;
    const double end = now() + budget;
    for (int i = 0; i < 2 || now() < end; i++) {
        const double t0 = now();
        wmat__wop_forward(&c->w[i % c->n], X, Y, T, 0, ex);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv)
{
    int threads = omp_get_max_threads(), T = 256;
    double budget = 0.5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--threads N] [--T 256] [--budget S]\n", argv[0]);
            return 2;
        }
    }
    wmat_linalg_init(threads);
    static const int64_t shapes[][2] = {{2048, 2048}, {5632, 2048}, {2048, 5632}};
    /* (blocks, slab rank): the paper's class (rank 1) at 32 blocks, and 4
     * blocks at ranks giving ~12.5%, 25% and 50% of the parameters */
    static const int64_t cfg[][2] = {{32, 1}, {4, 0}, {4, 0}, {4, 0}};
    static const double share[] = {0, 0.125, 0.25, 0.5};
    const wmat_wkind *f32 = wmat__wkind_find("f32");
    printf("Monarch vs fp32, %d threads, decode (1 row) and batched (T = %d); ms per call, speedup over fp32\n", threads, T);
    printf("%-12s %11s %8s | %9s %9s %8s | %9s %9s %8s\n", "shape", "blocks/K", "params", "f32 dec", "mon dec", "speedup",
           "f32 T", "mon T", "speedup");
    for (int s = 0; s < 3; s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1];
        float *W = malloc(sizeof(float) * (size_t)(m * n)), *x = malloc(sizeof(float) * (size_t)n * T);
        float *y = malloc(sizeof(float) * (size_t)m * T);
        wmat_rng r;
        wmat_rng_seed(&r, 1);
        for (int64_t i = 0; i < m * n; i++) W[i] = 0.02f * wmat_rng_normal(&r);
        for (int64_t i = 0; i < n * T; i++) x[i] = wmat_rng_normal(&r);
        wmat_wexec ex = wmat__wexec_from(NULL);
        ex.n_threads = threads;
        copies dense;
        make_copies(&dense, f32, W, m, n, 0, 0);
        const double fd = time_decode(&dense, x, y, &ex, budget), fb = time_batch(&dense, x, y, T, &ex, budget);
        for (int c = 0; c < 4; c++) {
            const int64_t b = cfg[c][0], P = m / b, S = n / b;
            int64_t K = cfg[c][1] ? cfg[c][1] : (int64_t)(share[c] * (double)(m * n) / (double)(b * (m + n)));
            if (K < 1) K = 1;
            if (K > (P < S ? P : S)) K = P < S ? P : S;
            copies mo;
            make_copies(&mo, NULL, W, m, n, b, K);
            const double md = time_decode(&mo, x, y, &ex, budget), mb = time_batch(&mo, x, y, T, &ex, budget);
            char bk[32];
            snprintf(bk, sizeof bk, "%lld/%lld", (long long)b, (long long)K);
            printf("%5lldx%-6lld %11s %7.1f%% | %9.3f %9.3f %7.2fx | %9.2f %9.2f %7.2fx\n", (long long)m, (long long)n, bk,
                   100.0 * (double)(K * b * (m + n)) / (double)(m * n), 1e3 * fd, 1e3 * md, fd / md, 1e3 * fb, 1e3 * mb,
                   fb / mb);
            free_copies(&mo);
            if (c == 0) continue;
            /* low-rank at the same share: r (m + n) = K b (m + n) */
            copies lr;
            make_copies(&lr, NULL, W, m, n, -1, K * b);
            const double ld = time_decode(&lr, x, y, &ex, budget), lb = time_batch(&lr, x, y, T, &ex, budget);
            snprintf(bk, sizeof bk, "lowrank %lld", (long long)(K * b));
            printf("%5lldx%-6lld %11s %7.1f%% | %9.3f %9.3f %7.2fx | %9.2f %9.2f %7.2fx\n", (long long)m, (long long)n, bk,
                   100.0 * (double)(K * b * (m + n)) / (double)(m * n), 1e3 * fd, 1e3 * ld, fd / ld, 1e3 * fb, 1e3 * lb,
                   fb / lb);
            free_copies(&lr);
        }
        free_copies(&dense);
        free(W), free(x), free(y);
    }
    return 0;
}
