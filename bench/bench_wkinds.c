/* Weight kinds in their stored type (src/wop/kern_dense.c) against fp32.
 *
 *   bench_wkinds [--threads N] [--shape RxC] [--T 256] [--budget S] [--quick]
 *
 * For each shape (default 2048x2048, 5632x2048, 2048x5632, 32000x2048):
 *   1. validates every kind's decode and batched kernels (best ISA) against
 *      the plain C twin and the fp32 product of the dequantized matrix;
 *   2. times decode (one input vector) at 1 and N threads: fp32
 *      wmat__matvec_multi_part (the runtime's matvec, rows split over
 *      OpenMP threads) against f16, bf16, q8_0 and q4_0 rows (the same row
 *      split; Q8_0 / Q4_0 include quantizing x, once per call);
 *   3. times batched (T rows of X) wmat_sgemm on fp32 W against the tiled
 *      forward of each kind, at 1 and N threads.
 * Decode prints the time, the ratio fp32 / kind, and the kind's bytes read
 * per second against the streaming-read bandwidth measured in the same run
 * at the same thread count: a sum of 64-bit words over a 1 GiB buffer,
 * timed like the kernels (best call) on 8 MB pieces taken in turn through
 * the buffer, in the same interleaved rounds. On a machine whose memory
 * other processes share, a best-of over short calls and one pass over the
 * whole GiB differ severalfold (both are printed); the kernels are timed
 * by best call, so the piece figure is their yardstick. Each timed
 * matrix is cycled through copies spanning at least 256 MB, so every call
 * streams its weights from memory, not from the last-level cache. Kinds
 * are timed in interleaved rounds (best of each) so that load from other
 * work on a shared machine falls on all of them alike.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "model/kernels.h"
#include "wop/kern_dense.h"
#include "wop/wop.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#define SPAN_BYTES ((size_t)256 << 20)
#define STREAM_BYTES ((size_t)1 << 30)

static double now(void) { return omp_get_wtime(); }

/* ---- streaming-read bandwidth: sum of 64-bit words over 1 GiB */
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_words(const uint64_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    uint64_t o[4];
    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    uint64_t s = o[0] + o[1] + o[2] + o[3];
    for (; i < n; i++) s += p[i];
    return s;
}
#else
static uint64_t sum_words(const uint64_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    for (; i < n; i++) s0 += p[i];
    return s0 + s1 + s2 + s3;
}
#endif

static volatile uint64_t g_sink;

/* Seconds of summing n words with nt threads (each a contiguous part). */
static double stream_once(const uint64_t *buf, size_t n, int nt)
{
    uint64_t tot = 0;
    const double t0 = now();
#pragma omp parallel num_threads(nt) reduction(+ : tot)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const size_t a = n * (size_t)t / (size_t)T, b = n * (size_t)(t + 1) / (size_t)T;
        tot += sum_words(buf + a, b - a);
    }
    const double dt = now() - t0;
    g_sink += tot;
    return dt;
}

#define PIECE_WORDS (((size_t)8 << 20) / 8)
static uint64_t *g_stream;
static size_t g_piece;

/* Best seconds of one 8 MB piece (pieces taken in turn through the GiB). */
static double time_stream(int nt, double budget)
{
    double best = 1e30;
    const double end = now() + budget;
    for (int i = 0; i < 5 || now() < end; i++) {
        const double dt = stream_once(g_stream + g_piece * PIECE_WORDS, PIECE_WORDS, nt);
        g_piece = (g_piece + 1) % (STREAM_BYTES / 8 / PIECE_WORDS);
        if (dt < best) best = dt;
        if (i > 5000) break;
    }
    return best;
}

/* ---- kinds */
enum { K_F32, K_F16, K_BF16, K_Q8, K_Q4, NK };
static const wmat_dtype k_dt[NK] = {WMAT_F32, WMAT_F16, WMAT_BF16, WMAT_Q8_0, WMAT_Q4_0};
static const char *k_name[NK] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

typedef struct {
    int rows, in, ncopy;
    size_t bytes; /* one copy */
    unsigned char *w;
    void *prep;
} kind_mat;

static void kind_alloc(kind_mat *m, int k, const float *w32, int rows, int in)
{
    m->rows = rows;
    m->in = in;
    m->bytes = wmat__wrow_bytes(k_dt[k], in) * (size_t)rows;
    m->ncopy = (int)((SPAN_BYTES + m->bytes - 1) / m->bytes);
    m->w = wmat__aligned_alloc(m->bytes * (size_t)m->ncopy);
    if (!m->w) {
        fprintf(stderr, "out of memory (%zu bytes)\n", m->bytes * (size_t)m->ncopy);
        exit(1);
    }
    if (wmat_from_f32(m->w, k_dt[k], w32, (uint64_t)rows * (uint64_t)in)) {
        fprintf(stderr, "%s: %s\n", k_name[k], wmat_last_error());
        exit(1);
    }
    for (int c = 1; c < m->ncopy; c++) memcpy(m->w + (size_t)c * m->bytes, m->w, m->bytes);
    const size_t pb = wmat__wrow_prep_bytes(k_dt[k], in);
    m->prep = pb ? wmat__aligned_alloc(pb) : NULL;
}

static void kind_free(kind_mat *m)
{
    wmat__free(m->w);
    wmat__free(m->prep);
    memset(m, 0, sizeof *m);
}

/* One decode call on copy c: y = W x with nt threads. */
static void decode_call(int k, kind_mat *m, int c, const float *x, float *y, int nt, int isa)
{
    const unsigned char *w = m->w + (size_t)c * m->bytes;
    if (k == K_F32) {
        const float *W = (const float *)w;
        float *out = y;
        if (nt <= 1) {
            wmat__matvec_multi_part(1, &out, &W, &m->rows, x, m->in, 0, 0, 1);
            return;
        }
#pragma omp parallel num_threads(nt)
        wmat__matvec_multi_part(1, &out, &W, &m->rows, x, m->in, 0, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
    if (m->prep) wmat__wrow_prepare(k_dt[k], x, m->in, m->prep, isa);
    if (nt <= 1) {
        wmat__wrow_dot(k_dt[k], w, m->in, x, m->prep, y, 0, m->rows, 0, isa);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int g0, g1;
        wmat__matvec_part_range(m->rows, omp_get_thread_num(), omp_get_num_threads(), &g0, &g1);
        wmat__wrow_dot(k_dt[k], w, m->in, x, m->prep, y, g0, g1, 0, isa);
    }
}

/* Seconds of one call: the best over `rounds` passes through the copies. */
static double time_decode(int k, kind_mat *m, const float *x, float *y, int nt, int isa, double budget)
{
    double best = 1e30;
    const double end = now() + budget;
    int c = 0;
    for (int i = 0; i < 5 || now() < end; i++) {
        const double t0 = now();
        decode_call(k, m, c, x, y, nt, isa);
        const double dt = now() - t0;
        if (dt < best) best = dt;
        c = (c + 1) % m->ncopy;
        if (i > 5000) break;
    }
    return best;
}

static int g_fail;

static void validate(int k, kind_mat *m, const float *wq32, const float *x, int isa)
{
    const int rows = m->rows, in = m->in;
    float *y = malloc(sizeof(float) * (size_t)rows), *yr = malloc(sizeof(float) * (size_t)rows);
    float *yd = malloc(sizeof(float) * (size_t)rows);
    decode_call(k, m, 0, x, y, 2, isa);
    decode_call(k, m, 0, x, yr, 1, WMAT_ISA_REF);
    wmat__matvec(yd, wq32, x, rows, in, 0, 1);
    double e_ref = 0, e_deq = 0, mx = 0;
    for (int i = 0; i < rows; i++) {
        if (!isfinite(y[i]) || !isfinite(yr[i])) e_ref = INFINITY;
        e_ref = fmax(e_ref, fabs(y[i] - yr[i]));
        e_deq = fmax(e_deq, fabs(y[i] - yd[i]));
        mx = fmax(mx, fabs(yd[i]));
    }
    /* the twins differ by summation order only; int8 x costs ~1% (Q8_0) */
    const double lim_ref = 1e-4 * mx, lim_deq = (k == K_Q8 || k == K_Q4 ? 3e-2 : 1e-4) * mx;
    const int ok = e_ref <= lim_ref && e_deq <= lim_deq;
    printf("  validate %-5s decode: |fast - plain C| %.2e, |fast - fp32 of dequantized| %.2e (max |y| %.2f) %s\n",
           k_name[k], e_ref, e_deq, mx, ok ? "ok" : "FAILED");
    if (!ok) g_fail = 1;
    free(y), free(yr), free(yd);
}

static void validate_batched(int k, kind_mat *m, const float *wq32, const float *X, int T, int nt, int isa)
{
    const int rows = m->rows, in = m->in;
    float *Y = malloc(sizeof(float) * (size_t)T * rows), *Yr = malloc(sizeof(float) * (size_t)T * rows);
    void *ws = malloc(wmat__wtile_ws_bytes(k_dt[k], rows, in, T, nt));
    wmat__wtile_forward(k_dt[k], m->w, rows, in, X, Y, T, 0, ws, nt, isa, WMAT_GEMM_AUTO);
    /* bf16 weights on a native bf16 matmul take X rounded to bf16 too: the
     * reference rounds it the same way */
    const int xbf16 = k_dt[k] == WMAT_BF16 && T > 1 && wmat__gemm_bf16_native(WMAT_GEMM_AUTO);
    float *Xr = malloc(sizeof(float) * (size_t)T * in);
    for (size_t i = 0; i < (size_t)T * in; i++) Xr[i] = xbf16 ? wmat_bf16_to_f32(wmat_f32_to_bf16(X[i])) : X[i];
    wmat_sgemm(0, 1, T, rows, in, 1.0f, Xr, in, wq32, in, 0.0f, Yr, rows);
    free(Xr);
    double e = 0, mx = 0;
    for (size_t i = 0; i < (size_t)T * rows; i++) {
        if (!isfinite(Y[i])) e = INFINITY;
        e = fmax(e, fabs(Y[i] - Yr[i]));
        mx = fmax(mx, fabs(Yr[i]));
    }
    const int ok = e <= 1e-4 * mx;
    printf("  validate %-5s batched T=%d: |tiles - sgemm of dequantized| %.2e (max %.2f) %s\n", k_name[k], T, e, mx,
           ok ? "ok" : "FAILED");
    if (!ok) g_fail = 1;
    free(Y), free(Yr), free(ws);
}

/* ---- the bitstack kind (object kind, through the kind table) against
 * the f32 kind in the same run: one-row path (prepare + rows, one thread)
 * at 1, 2 and 4 active blocks of rank 1, and the batched forward (tiles
 * dequantized for a GEMM) at 4. A random stack (signs and fp16 factors):
 * the kernels' cost does not depend on the values. The stack is a few MB,
 * so unlike the rows above it is not cycled through copies: its decode
 * figure is a cache-resident kernel speed. */
extern const wmat_wkind wmat__wkind_f32; /* kind_f32.c */

static double time_rows(const wmat_wkind *k, const wmat_tensor *W, const float *x, void *prep, float *y, double budget)
{
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.n_threads = 1;
    double best = 1e30;
    const double end = now() + budget;
    for (int i = 0; i < 3 || now() < end; i++) {
        const double t0 = now();
        k->prepare(W, x, prep, &ex);
        k->rows(W, x, prep, y, 0, W->shape[0], 0, &ex);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static void bench_bitstack(int rows, int in, const float *w32, const float *x, const float *X, int T, double budget)
{
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    const int nb = 4;
    const int64_t sb = (in + 7) / 8;
    uint8_t *sign = malloc((size_t)nb * rows * sb);
    float *u = malloc(sizeof(float) * (size_t)nb * rows), *v = malloc(sizeof(float) * (size_t)nb * in);
    for (size_t i = 0; i < (size_t)nb * rows * sb; i++) sign[i] = (uint8_t)wmat_rng_u64(&r);
    if (in % 8)
        for (int64_t i = 0; i < (int64_t)nb * rows; i++) sign[i * sb + sb - 1] &= (uint8_t)(0xFFu >> (8 - in % 8));
    for (size_t i = 0; i < (size_t)nb * rows; i++) u[i] = 0.1f * fabsf(wmat_rng_normal(&r));
    for (size_t i = 0; i < (size_t)nb * in; i++) v[i] = 0.1f * fabsf(wmat_rng_normal(&r));
    void *obj;
    wmat_tensor B, F;
    if (wmat__bitstack_create(rows, in, 1, nb, sign, u, v, NULL, &obj) ||
        wmat__wkind_f32.from_f32(w32, rows, in, &F)) {
        fprintf(stderr, "bitstack: %s\n", wmat_last_error());
        exit(1);
    }
    wmat__tensor_own_obj(&B, rows, in, obj);
    const wmat_wkind *kb = wmat__wkind_of(&B), *kf = &wmat__wkind_f32;
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.n_threads = 1;
    void *pb = malloc(kb->prep_bytes(&B, &ex) + 64), *pf = malloc(kf->prep_bytes(&F, &ex) + 64);
    float *y = malloc(sizeof(float) * (size_t)rows), *Y = malloc(sizeof(float) * (size_t)T * rows);
    const double tf = time_rows(kf, &F, x, pf, y, budget);
    printf("  bitstack rank 1, one thread (cache-resident)   time   vs f32   bpw\n");
    printf("  %-28s decode %7.3f ms %7.2fx %6.2f\n", "f32 (kind table)", tf * 1e3, 1.0, 32.0);
    for (int a = 1; a <= nb; a *= 2) {
        kb->set_active(&B, a);
        const double t = time_rows(kb, &B, x, pb, y, budget);
        char name[40];
        snprintf(name, sizeof name, "bitstack %d block%s", a, a > 1 ? "s" : "");
        printf("  %-28s decode %7.3f ms %7.2fx %6.2f\n", name, t * 1e3, tf / t, 8.0 * (double)B.nbytes / ((double)rows * in));
    }
    kb->set_active(&B, nb);
    void *ws = malloc(kb->ws_bytes(&B, T, &ex) + 64), *wsf = malloc(kf->ws_bytes(&F, T, &ex) + 64);
    double bf = 1e30, bb = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        kf->forward(&F, X, Y, T, 0, wsf, &ex);
        bf = fmin(bf, now() - t0);
        t0 = now();
        kb->forward(&B, X, Y, T, 0, ws, &ex);
        bb = fmin(bb, now() - t0);
    }
    printf("  %-28s T=%-4d %7.1f ms %7.2fx (f32 %.1f ms)\n", "bitstack 4 blocks batched", T, bb * 1e3, bf / bb, bf * 1e3);
    wmat__tensor_free_data(&B);
    wmat__tensor_free_data(&F);
    free(sign), free(u), free(v), free(pb), free(pf), free(y), free(Y), free(ws), free(wsf);
}

static void run_shape(int rows, int in, int maxt, int T, double budget, int quick)
{
    const int isa = wmat__isa_best();
    printf("\n== %d x %d (fp32 %.1f MB)\n", rows, in, (double)rows * in * 4 / 1e6);
    wmat_rng r;
    wmat_rng_seed(&r, 42);
    float *w32 = malloc(sizeof(float) * (size_t)rows * in), *wq32 = malloc(sizeof(float) * (size_t)rows * in);
    float *x = malloc(sizeof(float) * (size_t)in), *y = malloc(sizeof(float) * (size_t)rows);
    for (size_t i = 0; i < (size_t)rows * in; i++) w32[i] = 0.02f * wmat_rng_normal(&r);
    for (int i = 0; i < in; i++) x[i] = wmat_rng_normal(&r);

    /* decode: one kind in memory at a time would be fairer to memory but
     * the interleaved rounds need them all; at most ~1.3 GB here */
    kind_mat m[NK];
    for (int k = 0; k < NK; k++) {
        kind_alloc(&m[k], k, w32, rows, in);
        wmat__wrow_dequant(k_dt[k], m[k].w, in, 0, rows, wq32);
        if (k != K_F32) validate(k, &m[k], wq32, x, isa);
    }
    const int nts[2] = {1, maxt};
    double best[2][NK];
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < NK; k++) best[a][k] = 1e30;
    double bw[2] = {0, 0}; /* GB/s of the stream, best piece */
    const int rounds = quick ? 1 : 3;
    for (int round = 0; round < rounds; round++)
        for (int a = 0; a < (maxt > 1 ? 2 : 1); a++) {
            const double ts = time_stream(nts[a], budget / rounds);
            if ((double)PIECE_WORDS * 8 / ts / 1e9 > bw[a]) bw[a] = (double)PIECE_WORDS * 8 / ts / 1e9;
            for (int k = 0; k < NK; k++) {
                const double t = time_decode(k, &m[k], x, y, nts[a], isa, budget / rounds);
                if (t < best[a][k]) best[a][k] = t;
            }
        }
    for (int a = 0; a < (maxt > 1 ? 2 : 1); a++)
        printf("  streaming read, best 8 MB piece of the GiB: %.1f GB/s at %d thread%s\n", bw[a], nts[a],
               nts[a] > 1 ? "s" : "");
    printf("  decode (one vector)   threads      time   vs f32     GB/s  of stream\n");
    for (int a = 0; a < (maxt > 1 ? 2 : 1); a++)
        for (int k = 0; k < NK; k++) {
            const double gbs = (double)m[k].bytes / best[a][k] / 1e9;
            printf("  %-20s %8d %7.3f ms %7.2fx %8.1f %10.0f%%\n", k_name[k], nts[a], best[a][k] * 1e3,
                   best[a][K_F32] / best[a][k], gbs, 100.0 * gbs / bw[a]);
        }

    /* batched: one copy of each kind is enough (compute-bound) */
    float *X = malloc(sizeof(float) * (size_t)T * in), *Y = malloc(sizeof(float) * (size_t)T * rows);
    for (size_t i = 0; i < (size_t)T * in; i++) X[i] = wmat_rng_normal(&r);
    bench_bitstack(rows, in, w32, x, X, T, budget / 4);
    for (int k = 1; k < NK; k++) {
        wmat__wrow_dequant(k_dt[k], m[k].w, in, 0, rows, wq32);
        validate_batched(k, &m[k], wq32, X, quick ? 8 : 32, maxt, isa);
    }
    double bt[2][NK];
    const int breps = quick ? 1 : 3;
    for (int a = 0; a < (maxt > 1 ? 2 : 1); a++) {
        const int nt = nts[a];
        wmat_linalg_init(nt); /* wmat_sgemm's own thread count */
        /* one workspace for every kind: the largest (bf16's holds X in bf16) */
        size_t wsb = 0;
        for (int k = 0; k < NK; k++)
            if (k != K_F32 && wmat__wtile_ws_bytes(k_dt[k], rows, in, T, nt) > wsb) wsb = wmat__wtile_ws_bytes(k_dt[k], rows, in, T, nt);
        void *ws = malloc(wsb);
        for (int k = 0; k < NK; k++) bt[a][k] = 1e30;
        for (int rep = 0; rep < breps; rep++)
            for (int k = 0; k < NK; k++) {
                const double t0 = now();
                if (k == K_F32)
                    wmat_sgemm(0, 1, T, rows, in, 1.0f, X, in, (const float *)m[k].w, in, 0.0f, Y, rows);
                else
                    wmat__wtile_forward(k_dt[k], m[k].w, rows, in, X, Y, T, 0, ws, nt, isa, WMAT_GEMM_AUTO);
                const double dt = now() - t0;
                if (dt < bt[a][k]) bt[a][k] = dt;
            }
        free(ws);
    }
    printf("  batched T=%-4d        threads      time   vs f32   GFLOP/s\n", T);
    for (int a = 0; a < (maxt > 1 ? 2 : 1); a++)
        for (int k = 0; k < NK; k++)
            printf("  %-20s %8d %7.1f ms %7.2fx %9.1f\n", k == K_F32 ? "f32 (wmat_sgemm)" : k_name[k], nts[a],
                   bt[a][k] * 1e3, bt[a][K_F32] / bt[a][k], 2.0 * T * rows * (double)in / bt[a][k] / 1e9);
    for (int k = 0; k < NK; k++) kind_free(&m[k]);
    free(w32), free(wq32), free(x), free(y), free(X), free(Y);
}

int main(int argc, char **argv)
{
    int maxt = 2, T = 256, quick = 0, nshape = 4;
    double budget = 1.0;
    int shapes[8][2] = {{2048, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) maxt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = atof(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1, budget = 0.2;
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            if (sscanf(argv[++i], "%dx%d", &shapes[0][0], &shapes[0][1]) != 2) return 2;
            nshape = 1;
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--shape RxC] [--T 256] [--budget S] [--quick]\n", argv[0]);
            return 2;
        }
    }
    if (maxt < 1) maxt = 1;
    if (quick && nshape == 4) nshape = 2;
    if (wmat_linalg_init(maxt)) {
        fprintf(stderr, "linalg: %s\n", wmat_last_error());
        return 1;
    }
    static const char *isa_names[] = {"plain C", "?", "AVX2", "AVX-512"};
    printf("bench_wkinds: isa %s%s, threads 1 and %d, T %d\n%s\n", isa_names[wmat__isa_best()],
           wmat__isa_has_vnni() ? " + VNNI" : "", maxt, T, wmat_linalg_status());

    g_stream = wmat__aligned_alloc(STREAM_BYTES);
    if (!g_stream) return 1;
    for (size_t i = 0; i < STREAM_BYTES / 8; i++) g_stream[i] = i; /* touch every page */
    double whole[2] = {1e30, 1e30};
    for (int r = 0; r < 2; r++) {
        whole[0] = fmin(whole[0], stream_once(g_stream, STREAM_BYTES / 8, 1));
        whole[1] = fmin(whole[1], stream_once(g_stream, STREAM_BYTES / 8, maxt));
    }
    printf("streaming read, one pass over 1 GiB: %.1f GB/s at 1 thread, %.1f GB/s at %d\n", STREAM_BYTES / whole[0] / 1e9,
           STREAM_BYTES / whole[1] / 1e9, maxt);

    for (int s = 0; s < nshape; s++) run_shape(shapes[s][0], shapes[s][1], maxt, T, budget, quick);
    wmat__free(g_stream);
    if (g_fail) {
        printf("\nVALIDATION FAILED\n");
        return 1;
    }
    return 0;
}
