/* GEMM backends: validate each against a double-precision reference on a
 * small case, then time fp32 (2048^3 and model-sized shapes), int8 and
 * bf16 per backend, with ratios against OpenBLAS as loaded in this run.
 *
 *   bench_gemm [--threads N] [--quick] [--compare-cores]
 *
 * --compare-cores also runs this program twice more as child processes, with
 * OpenBLAS forced to its generic "Prescott" kernels and to the core wmat
 * would choose for this CPU, and prints their 2048^3 sgemm rates: the
 * before/after of the OPENBLAS_CORETYPE fix on this machine.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "linalg/linalg.h"

typedef struct {
    const char *what;
    int ta, tb, M, N, K;
} bshape;

/* Model-sized shapes: a linear layer y = x W^T with x (T, in) and W (out,
 * in), T = 256 tokens: the FFN up/gate (704 x 256) and down (256 x 704)
 * projections of a 256-wide model, and one decode token. */
static const bshape k_shapes[] = {
    {"square 2048^3 (NN)", 0, 0, 2048, 2048, 2048},
    {"ffn up   T=256 256x704x256 (NT)", 0, 1, 256, 704, 256},
    {"ffn down T=256 256x256x704 (NT)", 0, 1, 256, 256, 704},
    {"attn     T=256 256x256x256 (NT)", 0, 1, 256, 256, 256},
    {"small    16x64x64 (NT)", 0, 1, 16, 64, 64},
    {"batch    T=8 8x704x256 (NT)", 0, 1, 8, 704, 256},
    {"decode   T=1 1x704x256 (NT)", 0, 1, 1, 704, 256},
};

static const wmat_gemm_backend k_backends[] = {WMAT_GEMM_OPENBLAS, WMAT_GEMM_ONEDNN, WMAT_GEMM_REFERENCE,
                                               WMAT_GEMM_AUTO};

static void fill(float *x, size_t n, wmat_rng *r)
{
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * wmat_rng_uniform(r) - 1.0f;
}

/* ---- validation */

static int validate_f32(wmat_gemm_backend b)
{
    enum { M = 67, N = 45, K = 131 };
    float *A = malloc(sizeof(float) * K * M), *B = malloc(sizeof(float) * N * K), *C = malloc(sizeof(float) * M * N);
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    fill(A, (size_t)K * M, &r);
    fill(B, (size_t)N * K, &r);
    fill(C, (size_t)M * N, &r);
    float *C0 = malloc(sizeof(float) * M * N);
    memcpy(C0, C, sizeof(float) * M * N);
    int ok = wmat__sgemm_on(b, 0, 1, 1, M, N, K, 0.5f, A, M, B, K, -0.75f, C, N) == WMAT_OK;
    double worst = 0;
    for (int i = 0; i < M && ok; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                double p = (double)A[(size_t)k * M + i] * B[(size_t)j * K + k];
                s += p;
                sa += fabs(p);
            }
            double ref = 0.5 * s - 0.75 * C0[(size_t)i * N + j];
            double bound = (K + 4) * (double)FLT_EPSILON * (0.5 * sa + fabs(0.75 * C0[(size_t)i * N + j]));
            double e = fabs(C[(size_t)i * N + j] - ref) / bound;
            if (!(e <= 1.0)) ok = 0;
            if (e > worst) worst = e;
        }
    printf("  validate fp32 %-9s: %s (worst error %.3f of the bound)\n", wmat_gemm_backend_name(b),
           ok ? "ok" : "WRONG", worst);
    free(A);
    free(B);
    free(C);
    free(C0);
    return ok;
}

static int validate_i8(wmat_gemm_backend b)
{
    enum { M = 33, N = 70, K = 257 };
    int8_t *A = malloc(M * K), *B = malloc(K * N);
    int32_t *C = malloc(sizeof(int32_t) * M * N);
    wmat_rng r;
    wmat_rng_seed(&r, 10);
    for (int i = 0; i < M * K; i++) A[i] = (int8_t)wmat_rng_u64(&r);
    for (int i = 0; i < K * N; i++) B[i] = (int8_t)wmat_rng_u64(&r);
    A[0] = A[1] = -128;
    B[0] = B[N] = -128;
    int ok = wmat__gemm_s8s8s32_on(b, 0, 0, 1, M, N, K, A, K, B, K, 0, C, N) == WMAT_OK;
    for (int i = 0; i < M && ok; i++)
        for (int j = 0; j < N; j++) {
            int64_t s = 0;
            for (int k = 0; k < K; k++) s += (int64_t)A[i * K + k] * B[j * K + k];
            if (C[i * N + j] != s) ok = 0;
        }
    printf("  validate int8 %-9s: %s\n", wmat_gemm_backend_name(b), ok ? "ok (exact)" : "WRONG");
    free(A);
    free(B);
    free(C);
    return ok;
}

/* ---- timing */

typedef struct {
    int kind; /* 0 f32, 1 s8s8, 2 u8s8, 3 bf16 */
    wmat_gemm_backend b;
    bshape s;
    void *A, *B, *C;
} job;

static int run_job(const job *j)
{
    const bshape *s = &j->s;
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    switch (j->kind) {
    case 0:
        return wmat__sgemm_on(j->b, 0, s->ta, s->tb, s->M, s->N, s->K, 1.0f, j->A, lda, j->B, ldb, 0.0f, j->C, s->N);
    case 1:
        return wmat__gemm_s8s8s32_on(j->b, 0, s->ta, s->tb, s->M, s->N, s->K, j->A, lda, j->B, ldb, 0, j->C, s->N);
    case 2:
        return wmat__gemm_u8s8s32_on(j->b, 0, s->ta, s->tb, s->M, s->N, s->K, j->A, lda, j->B, ldb, 0, j->C, s->N);
    default:
        return wmat__gemm_bf16_on(j->b, 0, s->ta, s->tb, s->M, s->N, s->K, 1.0f, j->A, lda, j->B, ldb, 0.0f, j->C,
                                  s->N);
    }
}

/* Best rate in G(FL)OP/s over repeated calls for about `budget` seconds. */
static double time_job(int kind, wmat_gemm_backend b, bshape s, double budget)
{
    size_t esz = kind == 0 ? 4 : kind == 3 ? 2 : 1;
    size_t na = (size_t)s.M * s.K, nb = (size_t)s.K * s.N, nc = (size_t)s.M * s.N;
    job j = {kind, b, s, calloc(na, esz), calloc(nb, esz), calloc(nc, 4)};
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    for (size_t i = 0; i < na; i++) {
        float v = wmat_rng_uniform(&r) - 0.5f;
        if (kind == 0) ((float *)j.A)[i] = v;
        else if (kind == 3) ((uint16_t *)j.A)[i] = wmat_f32_to_bf16(v);
        else ((int8_t *)j.A)[i] = (int8_t)(v * 250);
    }
    for (size_t i = 0; i < nb; i++) {
        float v = wmat_rng_uniform(&r) - 0.5f;
        if (kind == 0) ((float *)j.B)[i] = v;
        else if (kind == 3) ((uint16_t *)j.B)[i] = wmat_f32_to_bf16(v);
        else ((int8_t *)j.B)[i] = (int8_t)(v * 250);
    }
    double best = 0;
    if (run_job(&j) == WMAT_OK) {
        double flop = 2.0 * s.M * (double)s.N * s.K, total = 0, tmin = INFINITY;
        int reps = 0;
        while (reps < 3 || (total < budget && reps < 100000)) {
            /* batch tiny calls so the timer resolution does not matter */
            int inner = flop < 1e7 ? 50 : 1;
            double t0 = wmat__now();
            for (int k = 0; k < inner; k++) run_job(&j);
            double dt = (wmat__now() - t0) / inner;
            total += dt * inner;
            if (dt < tmin) tmin = dt;
            reps++;
        }
        best = flop / tmin / 1e9;
    }
    free(j.A);
    free(j.B);
    free(j.C);
    return best;
}

static void table(const char *title, int kind, const char *unit, double budget, int quick)
{
    printf("\n%s (%s; ratio against openblas as loaded)\n", title, unit);
    printf("  %-34s", "shape");
    for (size_t b = 0; b < sizeof k_backends / sizeof k_backends[0]; b++)
        printf(" %16s", wmat_gemm_backend_name(k_backends[b]));
    if (kind == 0) printf(" %16s", "openblas pool");
    printf("   auto picks\n");
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++) {
        bshape s = k_shapes[i];
        if (quick && s.M == 2048) s.M = s.N = s.K = 512, s.what = "square 512^3 (NN)";
        printf("  %-34s", s.what);
        double base = 0;
        for (size_t b = 0; b <= sizeof k_backends / sizeof k_backends[0]; b++) {
            bool pool = b == sizeof k_backends / sizeof k_backends[0];
            if (pool && kind != 0) break;
            wmat_gemm_backend be = pool ? WMAT_GEMM_OPENBLAS : k_backends[b];
            bool avail = kind == 1 || kind == 2 ? be == WMAT_GEMM_AUTO || wmat__gemm_int8_native(be)
                                                : wmat_gemm_backend_available(be);
            /* the reference at 2048^3 takes seconds per call: time it at 1024^3 */
            bshape t = s;
            if (be == WMAT_GEMM_REFERENCE && s.M == 2048) t.M = t.N = t.K = 1024;
            /* "openblas pool": OpenBLAS's own threads instead of wmat's
             * OpenMP split; its idle workers spin for ~0.1 s afterwards,
             * so the next row waits that out */
            int prev = pool ? wmat__blas_threads_begin(0) : 0;
            double g = avail ? time_job(kind, be, t, budget) : 0;
            if (pool) {
                wmat__blas_threads_end(prev);
                usleep(300000);
            }
            if (be == WMAT_GEMM_OPENBLAS && !pool) base = g;
            if (g <= 0)
                printf(" %16s", "-");
            else if (base > 0)
                printf(" %8.1f (%4.2fx)%s", g, g / base, t.M != s.M ? "*" : " ");
            else
                printf(" %8.1f%s       ", g, t.M != s.M ? "*" : " ");
        }
        printf("  %s\n", kind == 0 ? wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, s.M, s.N, s.K)) : "");
    }
}

/* Time 2048^3 sgemm on OpenBLAS with OPENBLAS_CORETYPE=core in a child. */
static void compare_core(const char *self, const char *core, int threads)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "env OPENBLAS_CORETYPE=%s '%s' --threads %d --openblas-only", core, self, threads);
    fflush(stdout);
    if (system(cmd) != 0) printf("  (child with OPENBLAS_CORETYPE=%s failed)\n", core);
}

int main(int argc, char **argv)
{
    int threads = 0, quick = 0, cmp = 0, ob_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--compare-cores") == 0) cmp = 1;
        else if (strcmp(argv[i], "--openblas-only") == 0) ob_only = 1;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--quick] [--compare-cores]\n", argv[0]);
            return 2;
        }
    }
    if (wmat_linalg_init(threads) != WMAT_OK) {
        fprintf(stderr, "linalg init: %s\n", wmat_last_error());
        return 1;
    }
    if (ob_only) {
        bshape s = k_shapes[0];
        int ok = validate_f32(WMAT_GEMM_OPENBLAS);
        printf("  openblas core %-12s 2048^3 sgemm %7.1f GFLOP/s%s\n", wmat__blas_corename(),
               time_job(0, WMAT_GEMM_OPENBLAS, s, 1.0), ok ? "" : " (WRONG results)");
        return ok ? 0 : 1;
    }
    printf("bench_gemm: %s\n", wmat_linalg_status());
    printf("validation (small case against double precision):\n");
    int bad = 0;
    for (size_t b = 0; b < sizeof k_backends / sizeof k_backends[0]; b++) {
        wmat_gemm_backend be = k_backends[b];
        if (wmat_gemm_backend_available(be)) bad |= !validate_f32(be);
        if (be == WMAT_GEMM_AUTO || wmat__gemm_int8_native(be)) bad |= !validate_i8(be);
    }
    if (bad) {
        printf("a backend gave wrong results: not timing\n");
        return 1;
    }
    double budget = quick ? 0.1 : 0.6;
    table("fp32 sgemm", 0, "GFLOP/s", budget, quick);
    table("int8 s8s8s32", 1, "GOP/s", budget, quick);
    table("int8 u8s8s32", 2, "GOP/s", budget, quick);
    table("bf16 -> f32", 3, "GFLOP/s", budget, quick);
    printf("  (* timed at 1024^3; openblas and reference run bf16 widened to fp32, the\n"
           "   ratio column for int8 compares with nothing: openblas has no int8 GEMM)\n");
    if (cmp) {
        wmat_cpu_info ci;
        wmat__cpu_info(&ci);
        wmat_blas_tune t;
        wmat__blas_tune_decide("Prescott", wmat__blas_config(), &ci, NULL, NULL, &t);
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return 1;
        self[n] = '\0';
        int nt = wmat__linalg_threads(0);
        printf("\nOpenBLAS core type (separate processes, %d threads):\n", nt);
        printf("  as loaded here: %s\n", wmat__blas_corename());
        compare_core(self, "Prescott", nt);
        if (t.needed) compare_core(self, t.value, nt);
    }
    return 0;
}
