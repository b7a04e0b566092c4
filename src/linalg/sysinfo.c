/* sysinfo: what the machine and the linear-algebra setup are, and how fast
 * they run now. The library fills a struct (wmat__sysinfo_collect) and
 * writes it to a FILE* the caller gives; it never prints by itself.
 */
#include "linalg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

/* ---------------------------------------------------------------- timing */

typedef struct {
    int kind; /* 0 f32, 1 s8s8, 2 u8s8, 3 bf16 */
    wmat_gemm_backend b;
    int nt;
    int n;
    void *A, *B, *C;
} bench_ctx;

static int bench_run(const bench_ctx *c)
{
    int n = c->n;
    switch (c->kind) {
    case 0: return wmat__sgemm_on(c->b, c->nt, 0, 0, n, n, n, 1.0f, c->A, n, c->B, n, 0.0f, c->C, n);
    case 1: return wmat__gemm_s8s8s32_on(c->b, c->nt, 0, 0, n, n, n, c->A, n, c->B, n, 0, c->C, n);
    case 2: return wmat__gemm_u8s8s32_on(c->b, c->nt, 0, 0, n, n, n, c->A, n, c->B, n, 0, c->C, n);
    default: return wmat__gemm_bf16_on(c->b, c->nt, 0, 0, n, n, n, 1.0f, c->A, n, c->B, n, 0.0f, c->C, n);
    }
}

/* Best seconds per call: one warm-up call, then calls until `budget`
 * seconds have passed (at least 3). 0 on error. */
static double time_call(const bench_ctx *c, double budget)
{
    if (bench_run(c) != WMAT_OK) return 0.0;
    double best = INFINITY, total = 0.0;
    for (int r = 0; r < 100 && (r < 3 || total < budget); r++) {
        double t0 = wmat__now();
        if (bench_run(c) != WMAT_OK) return 0.0;
        double dt = wmat__now() - t0;
        total += dt;
        if (dt < best) best = dt;
    }
    return best;
}

/* Rate in G(FL)OP/s of an n^3 GEMM of `kind` on b; 0 if unavailable. */
static double rate(int kind, wmat_gemm_backend b, int nt, int n, double budget)
{
    size_t nn = (size_t)n * n, esz = kind == 0 ? 4 : kind == 3 ? 2 : 1;
    bench_ctx c = {kind, b, nt, n, wmat__aligned_alloc(nn * esz), wmat__aligned_alloc(nn * esz),
                   wmat__aligned_alloc(nn * 4)};
    double r = 0.0;
    if (c.A && c.B && c.C) {
        wmat_rng g;
        wmat_rng_seed(&g, 7);
        for (size_t i = 0; i < nn; i++) {
            float v = wmat_rng_uniform(&g) - 0.5f;
            switch (kind) {
            case 0: ((float *)c.A)[i] = v; ((float *)c.B)[i] = -v; break;
            case 3: ((uint16_t *)c.A)[i] = wmat_f32_to_bf16(v); ((uint16_t *)c.B)[i] = wmat_f32_to_bf16(-v); break;
            default: ((int8_t *)c.A)[i] = (int8_t)(v * 200); ((int8_t *)c.B)[i] = (int8_t)(v * 250); break;
            }
        }
        double t = time_call(&c, budget);
        if (t > 0.0) r = 2.0 * n * (double)n * n / t / 1e9;
    }
    wmat__free(c.A);
    wmat__free(c.B);
    wmat__free(c.C);
    return r;
}

static double copy_rate(size_t bytes, double budget)
{
    char *src = wmat__aligned_alloc(bytes), *dst = wmat__aligned_alloc(bytes);
    double r = 0.0;
    if (src && dst) {
        memset(src, 1, bytes);
        memcpy(dst, src, bytes); /* fault the pages in */
        double best = INFINITY, total = 0.0;
        for (int k = 0; k < 50 && (k < 3 || total < budget); k++) {
            double t0 = wmat__now();
            memcpy(dst, src, bytes);
            double dt = wmat__now() - t0;
            total += dt;
            if (dt < best) best = dt;
            src[(size_t)k * 4096 % bytes] ^= dst[bytes - 1]; /* keep the copy observable */
        }
        r = (double)bytes / best / 1e9;
    }
    wmat__free(src);
    wmat__free(dst);
    return r;
}

/* ---------------------------------------------------------------- collect */

int wmat__sysinfo_collect(wmat_sysinfo *si, int n_threads, int quick)
{
    if (!si) return wmat_set_error(WMAT_ERR_INVALID, "sysinfo: no struct");
    memset(si, 0, sizeof *si);
    int rc = wmat_linalg_init(n_threads);
    if (rc != WMAT_OK) return rc;
    wmat__cpu_info(&si->cpu);
    snprintf(si->openblas_config, sizeof si->openblas_config, "%s", wmat__blas_config());
    snprintf(si->openblas_core, sizeof si->openblas_core, "%s", wmat__blas_corename());
    const char *user = getenv("OPENBLAS_CORETYPE"), *guard = getenv(WMAT_BLAS_TUNE_GUARD);
    if (!user)
        snprintf(si->openblas_core_source, sizeof si->openblas_core_source, "autodetected by OpenBLAS");
    else
        snprintf(si->openblas_core_source, sizeof si->openblas_core_source, "OPENBLAS_CORETYPE=%.32s set by %s",
                 user, guard && strcmp(guard, user) == 0 ? "wmat's re-exec" : "the user");
    wmat__blas_tune_current(&si->tune);
    wmat__dnnl_describe(si->onednn, sizeof si->onednn);
    for (int b = 0; b < WMAT_N_BACKENDS; b++) si->available[b] = wmat_gemm_backend_available((wmat_gemm_backend)b);
    si->n_threads = wmat__linalg_threads(n_threads);
    si->blas_threads = wmat__blas_num_threads();
    si->omp_threads = omp_get_max_threads();
    snprintf(si->status, sizeof si->status, "%s", wmat_linalg_status());

    double budget = quick ? 0.02 : 0.3;
    si->f32_dim = quick ? 512 : 2048;
    si->f32_dim_ref = quick ? 192 : 1024;
    si->int8_dim = si->f32_dim;
    si->int8_dim_ref = si->f32_dim_ref;
    si->bf16_dim = si->f32_dim;
    for (int b = WMAT_GEMM_OPENBLAS; b <= WMAT_GEMM_REFERENCE; b++) {
        if (!si->available[b]) continue;
        bool ref = b == WMAT_GEMM_REFERENCE;
        int n = ref ? si->f32_dim_ref : si->f32_dim;
        si->f32_gflops[b] = rate(0, (wmat_gemm_backend)b, si->n_threads, n, budget);
        if (wmat__gemm_int8_native((wmat_gemm_backend)b)) {
            int n8 = ref ? si->int8_dim_ref : si->int8_dim;
            si->s8_gops[b] = rate(1, (wmat_gemm_backend)b, si->n_threads, n8, budget);
            si->u8_gops[b] = rate(2, (wmat_gemm_backend)b, si->n_threads, n8, budget);
        }
        si->bf16_native[b] = wmat__gemm_bf16_native((wmat_gemm_backend)b);
        si->bf16_gflops[b] = rate(3, (wmat_gemm_backend)b, si->n_threads, ref ? si->f32_dim_ref : si->bf16_dim, budget);
    }
    si->copy_mib = quick ? 16 : 128;
    si->copy_gbs = copy_rate((size_t)si->copy_mib << 20, budget);
    wmat_clear_error();
    return WMAT_OK;
}

/* ---------------------------------------------------------------- write */

int wmat__sysinfo_write(FILE *out, const wmat_sysinfo *si)
{
    if (!out || !si) return wmat_set_error(WMAT_ERR_INVALID, "sysinfo: no output");
    const wmat_cpu_info *c = &si->cpu;
    fprintf(out, "wmat %s sysinfo\n", WMAT_VERSION);
    fprintf(out, "cpu:            %s (%s family %d model %d stepping %d), %d logical CPUs for this process\n",
            c->model, c->vendor[0] ? c->vendor : "?", c->family, c->model_id, c->stepping, c->logical_cpus);
    const struct { const char *name; bool on; } feat[] = {
        {"sse4.2", c->sse42}, {"avx", c->avx}, {"fma", c->fma}, {"avx2", c->avx2},
        {"avx512f", c->avx512f}, {"avx512dq", c->avx512dq}, {"avx512bw", c->avx512bw},
        {"avx512vl", c->avx512vl}, {"avx512_vnni", c->avx512_vnni}, {"avx512_bf16", c->avx512_bf16},
        {"avx_vnni", c->avx_vnni}, {"amx_tile", c->amx_tile}, {"amx_int8", c->amx_int8},
        {"amx_bf16", c->amx_bf16},
    };
    fprintf(out, "cpu features:  ");
    for (size_t i = 0; i < sizeof feat / sizeof feat[0]; i++)
        if (feat[i].on) fprintf(out, " %s", feat[i].name);
    fprintf(out, "\ncpu lacks:     ");
    for (size_t i = 0; i < sizeof feat / sizeof feat[0]; i++)
        if (!feat[i].on) fprintf(out, " %s", feat[i].name);
    fprintf(out, "\n(features count only when the OS saves their registers)\n");
    fprintf(out, "openblas:       %s\n", si->openblas_config);
    fprintf(out, "openblas core:  %s (%s)\n", si->openblas_core, si->openblas_core_source);
    fprintf(out, "core tuning:    %s\n", si->tune.reason);
    fprintf(out, "onednn:         %s\n", si->onednn);
    fprintf(out, "backends:       openblas %s, onednn %s, reference yes; default: %s\n",
            si->available[WMAT_GEMM_OPENBLAS] ? "yes" : "no", si->available[WMAT_GEMM_ONEDNN] ? "yes" : "no",
            wmat_gemm_backend_name(wmat_gemm_get_backend()));
    fprintf(out, "threads:        linalg %d, openblas %d, openmp %d\n", si->n_threads, si->blas_threads,
            si->omp_threads);
    fprintf(out, "linalg status:  %s\n", si->status);
    fprintf(out, "measured now (best call of several; other load on the machine lowers them):\n");
    for (int b = WMAT_GEMM_OPENBLAS; b <= WMAT_GEMM_REFERENCE; b++) {
        if (si->f32_gflops[b] <= 0) continue;
        int n = b == WMAT_GEMM_REFERENCE ? si->f32_dim_ref : si->f32_dim;
        fprintf(out, "  fp32 gemm  %4d^3  %-9s %8.1f GFLOP/s\n", n, wmat_gemm_backend_name((wmat_gemm_backend)b),
                si->f32_gflops[b]);
    }
    for (int b = WMAT_GEMM_OPENBLAS; b <= WMAT_GEMM_REFERENCE; b++) {
        int n = b == WMAT_GEMM_REFERENCE ? si->int8_dim_ref : si->int8_dim;
        if (si->s8_gops[b] > 0)
            fprintf(out, "  int8 s8s8  %4d^3  %-9s %8.1f GOP/s\n", n, wmat_gemm_backend_name((wmat_gemm_backend)b),
                    si->s8_gops[b]);
        if (si->u8_gops[b] > 0)
            fprintf(out, "  int8 u8s8  %4d^3  %-9s %8.1f GOP/s\n", n, wmat_gemm_backend_name((wmat_gemm_backend)b),
                    si->u8_gops[b]);
    }
    for (int b = WMAT_GEMM_OPENBLAS; b <= WMAT_GEMM_REFERENCE; b++) {
        if (si->bf16_gflops[b] <= 0) continue;
        int n = b == WMAT_GEMM_REFERENCE ? si->f32_dim_ref : si->bf16_dim;
        fprintf(out, "  bf16 gemm  %4d^3  %-9s %8.1f GFLOP/s%s\n", n, wmat_gemm_backend_name((wmat_gemm_backend)b),
                si->bf16_gflops[b], si->bf16_native[b] ? "" : " (widened to fp32)");
    }
    fprintf(out, "  memcpy     %4.0f MiB          %8.1f GB/s (one thread)\n", si->copy_mib, si->copy_gbs);
    if (ferror(out)) return wmat_set_error(WMAT_ERR_IO, "sysinfo: write failed");
    return WMAT_OK;
}

int wmat_sysinfo_report(FILE *out, int n_threads, int quick)
{
    if (!out) return wmat_set_error(WMAT_ERR_INVALID, "wmat_sysinfo_report: no output stream");
    wmat_sysinfo *si = wmat__malloc(sizeof *si);
    if (!si) return wmat_set_error(WMAT_ERR_NOMEM, "wmat_sysinfo_report: out of memory");
    int rc = wmat__sysinfo_collect(si, n_threads, quick);
    if (rc == WMAT_OK) rc = wmat__sysinfo_write(out, si);
    wmat__free(si);
    return rc;
}
