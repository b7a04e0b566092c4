/* Packed quantized kernels against fp32, on matrices larger than the caches.
 *
 *   bench_qkernels [--rows R] [--cols C] [--threads N] [--quick]
 *
 * Default 4096 x 4096. First validates every kernel against the fp32 product
 * of the dequantized matrix, then times, in the same run:
 *   - memcpy bandwidth (GB/s of bytes copied, one thread and N threads),
 *   - fp32 matvec: cblas_sgemv (OpenBLAS, one thread as wmat runs it),
 *     wmat_sgemm with N = 1, wmat's own fp32 matvec (N threads),
 *   - packed matvec (decode) for several schemes at 1 and N threads, as
 *     GB/s of packed bytes read and as a speed-up over each fp32 matvec,
 *   - packed matmul (batched, T = 64) against wmat_sgemm.
 * Every timed matrix set spans at least 192 MB (copies are cycled) so that
 * each call streams from memory, not from the last-level cache.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "wop/qstore.h"

#define SPAN_BYTES ((size_t)192 << 20)

typedef struct {
    const char *name;
    int bits, sym, axis, group, perm;
} scheme;

static double now(void) { return omp_get_wtime(); }

/* Best-of timing: run fn until `budget` seconds pass (at least 3 times). */
typedef void (*work_fn)(void *ctx, int i);
static double best_time(work_fn fn, void *ctx, double budget)
{
    double best = 1e30, t_end = now() + budget;
    for (int i = 0; i < 3 || now() < t_end; i++) {
        double t0 = now();
        fn(ctx, i);
        double dt = now() - t0;
        if (dt < best) best = dt;
        if (i > 2000) break;
    }
    return best;
}

/* ---- memcpy */
typedef struct {
    char *src, *dst;
    size_t n;
    int nt;
} copy_ctx;
/* Bandwidth is timed on 16 MB pieces cycling through the whole span (so
 * every piece comes from memory): a call lasts about as long as a matvec,
 * which keeps the comparison fair on a machine shared with other work. */
#define PIECE ((size_t)16 << 20)
static void do_copy(void *c_, int i)
{
    copy_ctx *c = c_;
    const size_t off = (size_t)i % (c->n / PIECE) * PIECE, chunk = PIECE / (size_t)c->nt;
#pragma omp parallel for num_threads(c->nt) schedule(static)
    for (int t = 0; t < c->nt; t++) memcpy(c->dst + off + (size_t)t * chunk, c->src + off + (size_t)t * chunk, chunk);
}

/* ---- streaming read (what a matvec does with its weights) */
typedef struct {
    const uint64_t *p;
    size_t n;
    int nt;
    uint64_t sink;
} read_ctx;
static void do_read(void *c_, int i)
{
    read_ctx *c = c_;
    const size_t n = PIECE / 8, off = (size_t)i % (c->n / n) * n;
    uint64_t x = 0;
#pragma omp parallel for num_threads(c->nt) schedule(static) reduction(^ : x)
    for (size_t k = 0; k < n; k++) x ^= c->p[off + k];
    c->sink ^= x;
}

/* ---- fp32 */
typedef struct {
    float **W;
    int copies;
    const float *x;
    float *y;
    int rows, cols, nt, kind; /* 0 sgemv, 1 wmat_sgemm N=1, 2 wmat__matvec */
} f32_ctx;
static void do_f32(void *c_, int i)
{
    f32_ctx *c = c_;
    const float *W = c->W[i % c->copies];
    if (c->kind == 0) cblas_sgemv(CblasRowMajor, CblasNoTrans, c->rows, c->cols, 1.0f, W, c->cols, c->x, 1, 0.0f, c->y, 1);
    else if (c->kind == 1) wmat_sgemm(0, 1, 1, c->rows, c->cols, 1.0f, c->x, c->cols, W, c->cols, 0.0f, c->y, c->rows);
    else wmat__matvec(c->y, W, c->x, c->rows, c->cols, 0, c->nt);
}

/* ---- packed */
typedef struct {
    wmat_qtensor **Q;
    int copies;
    const float *x;
    float *y;
    int nt, act8;
} q_ctx;
static void do_q(void *c_, int i)
{
    q_ctx *c = c_;
    wmat__qmatvec_x(c->y, c->x, c->Q[i % c->copies], 0, c->nt, wmat__qkernel_best(), c->act8);
}

typedef struct {
    const wmat_qtensor *Q;
    const float *W;
    const float *X;
    float *Y;
    int T, rows, cols, nt;
} mm_ctx;
static void do_mm_q(void *c_, int i)
{
    mm_ctx *c = c_;
    (void)i;
    wmat__qmatmul_x(c->Y, c->X, c->Q, c->T, 0, c->nt, wmat__qkernel_best(), 0, WMAT_GEMM_AUTO);
}
static void do_mm_f(void *c_, int i)
{
    mm_ctx *c = c_;
    (void)i;
    wmat_sgemm(0, 1, c->T, c->rows, c->cols, 1.0f, c->X, c->cols, c->W, c->cols, 0.0f, c->Y, c->rows);
}

/* A qresult of W with plain RTN (min-max, or absmax when symmetric). */
static void rtn(wmat_qresult *q, const float *W, int rows, int cols, const scheme *s, wmat_rng *rng)
{
    if (wmat_qresult_alloc(q, s->bits, s->sym, (wmat_qaxis)s->axis, s->group, rows, cols, s->perm)) abort();
    if (s->perm)
        for (int k = cols - 1; k > 0; k--) {
            int j = (int)(wmat_rng_u64(rng) % (uint64_t)(k + 1));
            int32_t t = q->perm[k];
            q->perm[k] = q->perm[j];
            q->perm[j] = t;
        }
    const int maxq = (1 << s->bits) - 1;
    const int64_t ng = wmat_qresult_n_groups(q);
    float *lo = malloc((size_t)ng * 4), *hi = malloc((size_t)ng * 4);
    for (int64_t g = 0; g < ng; g++) lo[g] = INFINITY, hi[g] = -INFINITY;
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) {
            float w = W[(size_t)r * cols + (q->perm ? q->perm[k] : k)];
            int64_t g = wmat_qresult_group_of(q, r, k);
            lo[g] = fminf(lo[g], w), hi[g] = fmaxf(hi[g], w);
        }
    for (int64_t g = 0; g < ng; g++) {
        if (s->sym) {
            float a = fmaxf(fabsf(lo[g]), fabsf(hi[g]));
            q->scales[g] = a > 0 ? a / (float)((1 << (s->bits - 1)) - 1) : 1.0f;
            q->zeros[g] = (float)(1 << (s->bits - 1));
        } else {
            float l = fminf(lo[g], 0), h = fmaxf(hi[g], 0);
            q->scales[g] = h > l ? (h - l) / (float)maxq : 1.0f;
            q->zeros[g] = roundf(-l / q->scales[g]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) {
            float w = W[(size_t)r * cols + (q->perm ? q->perm[k] : k)];
            int64_t g = wmat_qresult_group_of(q, r, k);
            float c = roundf(w / q->scales[g]) + q->zeros[g];
            q->codes[(size_t)r * cols + k] = (uint8_t)fminf(fmaxf(c, 0), (float)maxq);
        }
    free(lo);
    free(hi);
}

int main(int argc, char **argv)
{
    int rows = 4096, cols = 4096, nt = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) cols = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "usage: bench_qkernels [--rows R] [--cols C] [--threads N] [--quick]\n");
            return 2;
        }
    }
    if (wmat_linalg_init(nt)) {
        fprintf(stderr, "linalg: %s\n", wmat_last_error());
        return 1;
    }
    nt = wmat_context_threads(NULL);
    if (nt < 1) nt = 1;
    const double budget = quick ? 0.15 : 0.6;
    printf("bench_qkernels: %d x %d, %d threads, packed kernels: %s\n%s\n", rows, cols, nt,
           wmat__qkernel_name(wmat__qkernel_best()), wmat_linalg_status());

    wmat_rng rng;
    wmat_rng_seed(&rng, 1);
    const size_t n = (size_t)rows * cols, f32_bytes = n * 4;
    const int f32_copies = (int)((SPAN_BYTES + f32_bytes - 1) / f32_bytes);
    float **W = malloc(sizeof(float *) * (size_t)f32_copies);
    for (int c = 0; c < f32_copies; c++) {
        W[c] = malloc(f32_bytes);
        for (size_t i = 0; i < n; i++) W[c][i] = c ? W[0][i] : 0.05f * wmat_rng_normal(&rng);
    }
    float *x = malloc((size_t)cols * 4), *y = malloc((size_t)rows * 4), *yref = malloc((size_t)rows * 4);
    for (int k = 0; k < cols; k++) x[k] = wmat_rng_normal(&rng);

    /* memcpy bandwidth */
    copy_ctx cc = {malloc(SPAN_BYTES), malloc(SPAN_BYTES), SPAN_BYTES, 1};
    memset(cc.src, 1, SPAN_BYTES);
    memset(cc.dst, 0, SPAN_BYTES);
    const double copy1 = (double)PIECE / best_time(do_copy, &cc, budget) / 1e9;
    cc.nt = nt;
    const double copyN = (double)PIECE / best_time(do_copy, &cc, budget) / 1e9;
    read_ctx rc = {(const uint64_t *)cc.src, SPAN_BYTES / 8, 1, 0};
    const double read1 = (double)PIECE / best_time(do_read, &rc, budget) / 1e9;
    rc.nt = nt;
    const double readN = (double)PIECE / best_time(do_read, &rc, budget) / 1e9;
    free(cc.src);
    free(cc.dst);
    printf("\nmemcpy (16 MB pieces of %zu MB): %.1f GB/s (1 thread), %.1f GB/s (%d threads)  [bytes copied per second]\n",
           SPAN_BYTES >> 20, copy1, copyN, nt);
    printf("read   (16 MB pieces of %zu MB): %.1f GB/s (1 thread), %.1f GB/s (%d threads)  [bytes read per second, xor of u64]\n",
           SPAN_BYTES >> 20, read1, readN, nt);

    /* fp32 matvecs */
    const char *f32_names[3] = {"cblas_sgemv (OpenBLAS)", "wmat_sgemm N=1", "wmat fp32 matvec"};
    double f32_t[3];
    printf("\nfp32 matvec (%.0f MB of weights per call):\n", f32_bytes / 1e6);
    for (int kind = 0; kind < 3; kind++) {
        f32_ctx fc = {W, f32_copies, x, y, rows, cols, nt, kind};
        f32_t[kind] = best_time(do_f32, &fc, budget);
        printf("  %-24s %8.3f ms  %6.1f GB/s\n", f32_names[kind], f32_t[kind] * 1e3, f32_bytes / f32_t[kind] / 1e9);
    }
    const double f32_best = fmin(f32_t[0], fmin(f32_t[1], f32_t[2]));
    (void)copy1;
    double f32_1t;
    {
        f32_ctx fc = {W, f32_copies, x, y, rows, cols, 1, 2};
        f32_1t = best_time(do_f32, &fc, budget);
        printf("  %-24s %8.3f ms  %6.1f GB/s (1 thread)\n", "wmat fp32 matvec", f32_1t * 1e3, f32_bytes / f32_1t / 1e9);
    }

    static const scheme schemes[] = {
        {"4-bit sym g32 (=Q4_0)", 4, 1, 0, 32, 0}, {"8-bit sym g32 (=Q8_0)", 8, 1, 0, 32, 0},
        {"4-bit asym g128", 4, 0, 0, 128, 0},     {"4-bit sym g128 act-order", 4, 1, 0, 128, 1},
        {"4-bit asym per-IC", 4, 0, 1, 0, 0},     {"3-bit asym g64", 3, 0, 0, 64, 0},
        {"2-bit asym g64", 2, 0, 0, 64, 0},       {"8-bit asym per-OC", 8, 0, 0, 0, 0},
    };
    printf("\npacked matvec (decode), validated against the fp32 product of the dequantized matrix:\n");
    printf("  %-26s %6s | %8s %7s %6s %7s %7s | %8s %7s %6s %7s\n", "", "", "1 thread", "", "", "", "", "threads", "", "", "");
    printf("  %-26s %6s | %8s %7s %6s %7s %7s | %8s %7s %6s %7s\n", "scheme", "bits/w", "ms", "GB/s", "%read", "x sgemv",
           "x fp32", "ms", "GB/s", "%read", "x fp32");
    float *Wd = malloc(f32_bytes);
    int failed = 0;
    wmat_qtensor *q4 = NULL;
    for (size_t si = 0; si < sizeof schemes / sizeof schemes[0]; si++) {
        scheme s = schemes[si];
        if (s.group == 0) s.group = s.axis == 0 ? cols : rows;
        wmat_qresult q;
        rtn(&q, W[0], rows, cols, &s, &rng);
        wmat_qtensor *first;
        if (wmat_qtensor_pack(&q, &first)) {
            fprintf(stderr, "pack: %s\n", wmat_last_error());
            return 1;
        }
        const double qbytes = (double)wmat_qtensor_nbytes(first);
        int copies = (int)((double)SPAN_BYTES / qbytes + 0.999);
        if (copies > 64) copies = 64;
        wmat_qtensor **Q = malloc(sizeof *Q * (size_t)copies);
        Q[0] = first;
        for (int c = 1; c < copies; c++)
            if (wmat_qtensor_pack(&q, &Q[c])) return 1;
        /* validate (fp32 activations first; int8 below) */
        const int best = wmat__qkernel_best();
        wmat_qtensor_dequant(first, Wd);
        wmat__matvec(yref, Wd, x, rows, cols, 0, nt);
        wmat__qmatvec_x(y, x, first, 0, nt, best, 0);
        double err = 0, mag = 0;
        for (int r = 0; r < rows; r++) err = fmax(err, fabs(y[r] - yref[r])), mag = fmax(mag, fabs(yref[r]));
        if (!(err <= 1e-4 * mag)) {
            printf("  %-26s VALIDATION FAILED: max error %g (max |y| %g)\n", s.name, err, mag);
            failed = 1;
        }
        for (int a8 = 0; a8 < 2; a8++) {
            if (a8 && !(s.axis == 0 && wmat__qkernel_act8_at(best, 1))) break;
            if (a8) { /* validate against the exact product within the activation-rounding scale */
                wmat__qmatvec_x(y, x, first, 0, nt, best, 1);
                double e8 = 0;
                for (int r = 0; r < rows; r++) e8 = fmax(e8, fabs(y[r] - yref[r]));
                if (!(e8 <= 2e-2 * mag)) {
                    printf("  %-26s int8-activation VALIDATION FAILED: max error %g (max |y| %g)\n", s.name, e8, mag);
                    failed = 1;
                }
            }
            q_ctx qc = {Q, copies, x, y, nt, a8};
            const double t = best_time(do_q, &qc, budget);
            qc.nt = 1;
            const double t1 = best_time(do_q, &qc, budget);
            const double gbs = qbytes / t / 1e9;
            char label[64];
            snprintf(label, sizeof label, "%s%s", a8 ? "  + int8 act (default)" : "", a8 ? "" : s.name);
            const double gbs1 = qbytes / t1 / 1e9;
            printf("  %-26s %6.3f | %8.3f %7.1f %5.0f%% %7.2f %7.2f | %8.3f %7.1f %5.0f%% %7.2f\n", label,
                   8 * qbytes / (double)n, t1 * 1e3, gbs1, 100 * gbs1 / read1, f32_t[0] / t1, f32_1t / t1, t * 1e3, gbs,
                   100 * gbs / readN, f32_best / t);
        }
        for (int c = 1; c < copies; c++) wmat_qtensor_free(Q[c]);
        free(Q);
        if (si == 0) q4 = first;
        else wmat_qtensor_free(first);
        wmat_qresult_free(&q);
    }
    printf("  (GB/s: packed bytes read per second; %%read: of the streaming-read rate at the same thread count;\n"
           "   1 thread: x sgemv = speed-up over cblas_sgemv (OpenBLAS runs one thread under wmat), x fp32 = over wmat's\n"
           "   fp32 matvec on 1 thread; %d threads: x fp32 = over the fastest fp32 path above. Multi-thread times\n"
           "   are meaningless on an oversubscribed machine: a descheduled thread stalls the OpenMP barrier.)\n",
           nt);

    /* batched */
    const int T = 64;
    float *X = malloc((size_t)T * cols * 4), *Y = malloc((size_t)T * rows * 4);
    for (size_t i = 0; i < (size_t)T * cols; i++) X[i] = wmat_rng_normal(&rng);
    mm_ctx mc = {q4, W[0], X, Y, T, rows, cols, nt};
    const double tf = best_time(do_mm_f, &mc, budget), tq = best_time(do_mm_q, &mc, budget);
    printf("\nbatched T=%d: wmat_sgemm fp32 %.2f ms, packed 4-bit g32 (dequantized tiles + sgemm) %.2f ms: %.2fx the fp32 time\n",
           T, tf * 1e3, tq * 1e3, tq / tf);

    wmat_qtensor_free(q4);
    for (int c = 0; c < f32_copies; c++) free(W[c]);
    free(W), free(Wd), free(x), free(y), free(yref), free(X), free(Y);
    return failed;
}
