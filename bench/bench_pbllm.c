/* PB-LLM matvec (decode) against fp32 sgemv and wmat's 4-bit kernel.
 *
 *   bench_pbllm [--rows R] [--cols C] [--salient F] [--threads N]
 *
 * Default 4096 x 4096, 10% salient (the kind's from_f32: magnitude rule, no
 * error feedback; the kernel's cost does not depend on which weights are
 * salient, only on how many). Validates first (each kernel against the
 * double product of its dequantized matrix), then times in the same run,
 * best of repeated calls in this thread's CPU time: cblas_sgemv (one thread), the 4-bit packed kind
 * (qpacked 4b sym g32, its from_f32), and the pbllm kind's AVX2 path and C
 * twin, at one and N threads. Copies of every matrix are cycled so that
 * each call streams at least 128 MB worth of copies from memory, not from
 * the last-level cache. Prints ms per matvec, GB/s of stored bytes, and
 * speed-ups over sgemv and over the 4-bit kernel. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wop/kern_dense.h"
#include "wop/wop.h"

#define SPAN ((size_t)128 << 20)

/* A copy of W that shares no storage with it: its parts copied, then loaded. */
typedef struct {
    wmat_wpart parts[WMAT_WPART_MAX];
    int n;
} store;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    (void)dtype, (void)ndim, (void)d0, (void)d1;
    store *s = user;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->parts[i].suffix, suffix)) {
            *data = s->parts[i].data;
            return WMAT_OK;
        }
    return wmat_set_error(WMAT_ERR_FORMAT, "no part %s", suffix);
}

static size_t part_bytes(const wmat_wpart *p)
{
    const int64_t n = p->ndim == 2 ? p->shape[0] * p->shape[1] : p->shape[0];
    return (size_t)wmat_dtype_bytes(p->dtype, (uint64_t)n);
}

static void copy_weight(const wmat_tensor *W, wmat_tensor *out)
{
    const wmat_wkind *k = wmat__wkind_of(W);
    cJSON *desc = cJSON_CreateObject();
    store s = {.n = 0};
    if (k->save(W, desc, s.parts, &s.n, "bench")) abort();
    for (int i = 0; i < s.n; i++) {
        const size_t b = part_bytes(&s.parts[i]);
        void *c = aligned_alloc(64, (b + 63) / 64 * 64);
        memcpy(c, s.parts[i].data, b);
        s.parts[i].data = c; /* leaked on purpose: the copy lives until exit */
    }
    void *obj;
    if (k->load(desc, W->shape[0], W->shape[1], get_part, &s, "bench", &obj)) {
        fprintf(stderr, "bench_pbllm: %s\n", wmat_last_error());
        exit(1);
    }
    wmat__tensor_init2(out, WMAT_OBJ, W->shape[0], W->shape[1], obj);
    cJSON_Delete(desc);
}

static double rel_err(const float *y, const float *D, const float *x, int64_t R, int64_t C)
{
    double num = 0, den = 0;
    for (int64_t r = 0; r < R; r++) {
        double s = 0;
        for (int64_t c = 0; c < C; c++) s += (double)D[r * C + c] * x[c];
        if (!isfinite(y[r])) return INFINITY;
        num += (y[r] - s) * (y[r] - s);
        den += s * s;
    }
    return sqrt(num / den);
}

typedef struct {
    wmat_tensor *W; /* copies */
    int n;
    const float *x;
    float *y;
    void *prep;
    wmat_wexec ex;
} mv_ctx;

static void run_kind(mv_ctx *c, int i)
{
    const wmat_tensor *W = &c->W[i % c->n];
    const wmat_wkind *k = wmat__wkind_of(W);
    k->prepare(W, c->x, c->prep, &c->ex);
    wmat__wop_rows_all(k, W, c->x, c->prep, c->y, 0, &c->ex);
}

/* This thread's CPU time: the machine is shared, and a descheduled thread
 * would count other processes' time in a wall clock (timings are one
 * thread's, so CPU time is the kernel's time). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double best_ms(mv_ctx *c, int sgemv, float **F, int nf, int64_t R, int64_t C)
{
    double best = 1e30;
    const double end = omp_get_wtime() + 1.5;
    for (int i = 0; i < 5 || omp_get_wtime() < end; i++) {
        const double t0 = cpu_now();
        if (sgemv) cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f, F[i % nf], (int)C, c->x, 1, 0.0f, c->y, 1);
        else run_kind(c, i);
        const double dt = cpu_now() - t0;
        best = dt < best ? dt : best;
        if (i > 5000) break;
    }
    return best * 1e3;
}

int main(int argc, char **argv)
{
    int64_t R = 4096, C = 4096;
    double frac = 0.1;
    int nt = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) R = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--cols")) C = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--salient")) frac = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) nt = atoi(argv[i + 1]);
    }
    (void)frac; /* from_f32 keeps 10%; other fractions come from the method (wmat quantize --salient) */
    float *W0 = malloc((size_t)(R * C) * sizeof(float)), *D = malloc((size_t)(R * C) * sizeof(float));
    float *x = malloc((size_t)C * sizeof(float)), *y = malloc((size_t)R * sizeof(float));
    wmat_rng g;
    wmat_rng_seed(&g, 1);
    for (int64_t i = 0; i < R * C; i++) W0[i] = 0.02f * wmat_rng_normal(&g);
    for (int64_t c = 0; c < C; c++) x[c] = wmat_rng_normal(&g);

    const char *names[2] = {"qpacked", "pbllm"};
    wmat_tensor base[2];
    mv_ctx ctx[2];
    double bytes[2];
    for (int k = 0; k < 2; k++) {
        const wmat_wkind *kind = wmat__wkind_find(names[k]);
        if (kind->from_f32(W0, R, C, &base[k])) {
            fprintf(stderr, "bench_pbllm: %s\n", wmat_last_error());
            return 1;
        }
        bytes[k] = (double)kind->nbytes(&base[k]);
        const int n = (int)(SPAN / (size_t)bytes[k]) + 1;
        ctx[k] = (mv_ctx){calloc((size_t)n, sizeof(wmat_tensor)), n, x, y, NULL, wmat__wexec_from(NULL)};
        for (int i = 0; i < n; i++) copy_weight(&base[k], &ctx[k].W[i]);
        ctx[k].prep = aligned_alloc(64, (kind->prep_bytes(&base[k], &ctx[k].ex) + 64) / 64 * 64);
        /* validate every ISA level this CPU runs, on a copy */
        kind->dequant_rows(&base[k], 0, R, D);
        for (int isa = WMAT_ISA_REF; isa <= wmat__isa_best() && isa <= WMAT_ISA_AVX2; isa += 2) {
            ctx[k].ex.isa = isa;
            ctx[k].ex.n_threads = 1;
            run_kind(&ctx[k], 1);
            const double e = rel_err(y, D, x, R, C);
            if (!(e <= kind->row_tol)) {
                fprintf(stderr, "bench_pbllm: %s isa %d is %g from its dequantized product\n", names[k], isa, e);
                return 1;
            }
        }
    }
    const int nf = (int)(SPAN / ((size_t)(R * C) * 4)) + 1;
    float **F = malloc((size_t)nf * sizeof(float *));
    for (int i = 0; i < nf; i++) {
        F[i] = aligned_alloc(64, (size_t)(R * C) * 4);
        memcpy(F[i], W0, (size_t)(R * C) * 4);
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f, W0, (int)C, x, 1, 0.0f, y, 1);
    char d[96];
    wmat__wkind_find("pbllm")->describe(&base[1], d, sizeof d);
    printf("matvec %lld x %lld, one call streams its copy from memory; pbllm: %s\n", (long long)R, (long long)C, d);
    printf("%-28s %8s %10s %8s %9s %9s\n", "kernel", "threads", "ms", "GB/s", "x sgemv", "x 4-bit");
    const double t_f32 = best_ms(&ctx[0], 1, F, nf, R, C);
    printf("%-28s %8d %10.3f %8.2f %9.2f %9s\n", "fp32 cblas_sgemv", 1, t_f32, (double)(R * C) * 4 / t_f32 / 1e6, 1.0, "");
    for (int threads = 1; threads <= nt; threads += nt > 1 ? nt - 1 : 1) {
        ctx[0].ex.isa = ctx[1].ex.isa = wmat__isa_best();
        ctx[0].ex.n_threads = ctx[1].ex.n_threads = threads;
        const double t4 = best_ms(&ctx[0], 0, F, nf, R, C);
        printf("%-28s %8d %10.3f %8.2f %9.2f %9.2f\n", "qpacked 4b sym g32", threads, t4, bytes[0] / t4 / 1e6, t_f32 / t4, 1.0);
        for (int isa = wmat__isa_best() >= WMAT_ISA_AVX2 ? WMAT_ISA_AVX2 : WMAT_ISA_REF; isa >= WMAT_ISA_REF; isa -= 2) {
            ctx[1].ex.isa = isa;
            const double tp = best_ms(&ctx[1], 0, F, nf, R, C);
            printf("%-28s %8d %10.3f %8.2f %9.2f %9.2f\n", isa ? "pbllm (AVX2)" : "pbllm (C twin)", threads, tp,
                   bytes[1] / tp / 1e6, t_f32 / tp, t4 / tp);
        }
    }
    return 0;
}
