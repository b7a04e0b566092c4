/* GEMM: one interface, backends chosen at run time.
 *
 * Backends: oneDNN (dnnl_sgemm, dnnl_gemm_[su]8s8s32, bf16 matmul), OpenBLAS
 * (cblas_sgemm, fp32 only) and the portable reference (gemm_ref.c). At the
 * first use (or wmat_linalg_init) each backend runs a self-check: a few
 * small GEMMs, including transposes, padded leading dimensions, alpha/beta,
 * beta == 0 over a NaN-filled C, and extreme int8 values, compared with a
 * double-precision reference. A backend that fails is not used, and
 * wmat_linalg_status() says why.
 *
 * AUTO picks by availability and by kernel quality, not by timing at start
 * (which on a busy machine would make the choice, and so the rounding of
 * every result, change from run to run):
 *   - fp32: oneDNN; OpenBLAS for small problems (M N K <= 64^3, M, N > 1)
 *     when its kernels match the CPU, where its lower call overhead wins;
 *     OpenBLAS when oneDNN is absent; else the reference. (Measured on a
 *     2-core AVX-512 EPYC, GFLOP/s oneDNN vs OpenBLAS: 2048^3 216 vs 196,
 *     256x704x256 197 vs 177, 256^3 176 vs 196, 8x704x256 144 vs 61,
 *     1x704x256 56 vs 39, 16x64x64 41 vs 79; bench/bench_gemm prints them.)
 *   - int8: oneDNN, else the reference (OpenBLAS has no int8 GEMM).
 *   - bf16: oneDNN's matmul, else bf16 widened to fp32 and the fp32 choice.
 * Settings are arguments: every entry point takes the backend (AUTO: the
 * process default) and the thread count of its caller's context. The only
 * file-scope state is what the first use detects and never changes
 * afterwards (the probe below, under pthread_once): the CPU, which backends
 * passed their self-check, the default backend (WMAT_GEMM_BACKEND, read
 * once) and whether the user gave OpenBLAS a thread count of its own. So two
 * runtimes with different backends and thread counts in one process, used
 * in turns or at the same time from two threads, do not change each other's
 * results (tests/test_context.c).
 * Threads: one pool, OpenMP's. oneDNN (OpenMP runtime) and the reference
 * run on the count a call is given; OpenBLAS is set to one thread at the
 * first use (unless the user set its count) and its large GEMMs are split
 * over the call's OpenMP threads (blas_sgemm). Measured here: after a
 * multithreaded OpenBLAS call its idle workers spin for ~0.1 s, and OpenMP
 * work started in that window (oneDNN int8 512^3) ran at 30 instead of 600+
 * GOP/s. Inside an OpenMP parallel region a call uses one thread: oneDNN
 * and the reference are told so, and OpenBLAS is used only if its own count
 * is one (its pool cannot be told per call), else the call goes to oneDNN
 * or the reference.
 */
#include "linalg.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <omp.h>

/* Largest M*N*K that AUTO sends to OpenBLAS when oneDNN is there too. */
#define SMALL_MNK (64.0 * 64.0 * 64.0)
/* Elements of B (N*K) from which AUTO prefers OpenBLAS on AVX2-only CPUs
 * (2 MB of fp32: past a Zen 2 core's L2 + its share of L3). */
#define LARGE_B (512.0 * 1024.0)

/* What the probe finds, written once under g_once and read-only after. */
typedef struct {
    wmat_cpu_info cpu;
    wmat_gemm_backend default_backend; /* WMAT_GEMM_BACKEND (when available), else AUTO */
    bool blas_env;        /* the user set OpenBLAS's thread count: wmat never changes it */
    int blas_own_threads; /* OpenBLAS's count outside lending: 1, or the user's */
    bool openblas_ok;     /* passed the self-check */
    bool openblas_native; /* its kernels match the CPU's ISA level */
    bool dnnl_f32, dnnl_s8, dnnl_u8, dnnl_bf16;
    char openblas_note[256];
    char dnnl_note[512];
    char core_source[96];
    char status[1536];    /* wmat_linalg_status() */
} linalg_state;

static linalg_state g;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* Lending OpenBLAS threads to LAPACK (wmat__blas_threads_begin/end)
 * changes the one setting wmat touches after the probe, OpenBLAS's own
 * thread count, which is one per process, and OpenBLAS's results depend on
 * it (measured with OpenBLAS 0.3.20: sgemm 32x256x704 differs in the last
 * bits at 2 threads and at 1). So a loan is exclusive: it holds g_blas_use
 * for writing, and every other OpenBLAS call wmat makes holds it for
 * reading (wmat__blas_use_begin/end), waiting while a loan runs elsewhere.
 * The lending thread itself does not take the read side (t_loan_depth). */
static pthread_rwlock_t g_blas_use = PTHREAD_RWLOCK_INITIALIZER;
static _Thread_local int t_loan_depth;   /* loans this thread holds (nested) */
static _Thread_local int t_loan_threads; /* the count it lent (the largest asked for) */

static void probe(void);
static void ensure_probe(void) { pthread_once(&g_once, probe); }

static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v;
}

/* Threads for a call made now with n_threads asked for (no probe: usable
 * while probing): one inside a parallel region, else the count asked for,
 * else the calling thread's OpenMP default (what wmat_context_threads
 * gives a context that leaves n_threads at 0). */
static int threads_for(int n_threads)
{
    if (omp_in_parallel()) return 1;
    if (n_threads > 0) return n_threads;
    int t = omp_get_max_threads();
    return t > 0 ? t : 1;
}

int wmat__linalg_threads(int n_threads)
{
    ensure_probe();
    return threads_for(n_threads);
}

/* AUTO: the process default (fixed by the probe). */
static wmat_gemm_backend resolve(wmat_gemm_backend b) { return b == WMAT_GEMM_AUTO ? g.default_backend : b; }

/* ---------------------------------------------------------------- checks */

static int check_args(const char *fn, int ta, int tb, int M, int N, int K, const void *A, int lda,
                      const void *B, int ldb, const void *C, int ldc)
{
    int acols = ta ? M : K, bcols = tb ? K : N;
    if (M < 0 || N < 0 || K < 0)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: negative size M=%d N=%d K=%d", fn, M, N, K);
    if (lda < (acols > 1 ? acols : 1) || ldb < (bcols > 1 ? bcols : 1) || ldc < (N > 1 ? N : 1))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "%s: leading dimension too small (M=%d N=%d K=%d trans %d%d, lda=%d ldb=%d ldc=%d)",
                              fn, M, N, K, ta != 0, tb != 0, lda, ldb, ldc);
    if ((M > 0 && N > 0 && !C) || (M > 0 && N > 0 && K > 0 && (!A || !B)))
        return wmat_set_error(WMAT_ERR_INVALID, "%s: NULL matrix", fn);
    return WMAT_OK;
}

/* ---------------------------------------------------------------- execution */

/* OpenBLAS under wmat's thread policy runs one thread per call; a large
 * product is split into nt slices of C (rows or columns, whichever
 * dimension is longer; multiples of 16) computed by OpenMP threads. This
 * runs as fast as OpenBLAS's own pool (2048^3: 192 vs 198 GFLOP/s; 128^3:
 * 150 vs 121) and keeps one thread pool in the process. If the user gave
 * OpenBLAS threads of its own (OPENBLAS_NUM_THREADS...), it is called
 * directly instead (only outside parallel regions: see pick_f32). */
static void blas_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc, int nt)
{
    if (nt <= 1 || g.blas_own_threads > 1 || (double)M * N * K <= SMALL_MNK) {
        wmat__blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    bool rows = M >= N;
    int dim = rows ? M : N;
    int per = ((dim + nt - 1) / nt + 15) / 16 * 16;
    int parts = (dim + per - 1) / per;
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int p = 0; p < parts; p++) {
        int s = p * per, len = dim - s < per ? dim - s : per;
        if (rows)
            wmat__blas_sgemm(ta, tb, len, N, K, alpha, A + (ta ? (size_t)s : (size_t)s * lda), lda, B, ldb, beta,
                             C + (size_t)s * ldc, ldc);
        else
            wmat__blas_sgemm(ta, tb, M, len, K, alpha, A, lda, B + (tb ? (size_t)s * ldb : (size_t)s), ldb, beta,
                             C + s, ldc);
    }
}

/* The read side of g_blas_use, for callers inside linalg that run after
 * the probe has set g.blas_env (or inside it: it is set first). */
static void use_begin(void)
{
    if (!g.blas_env && t_loan_depth == 0) pthread_rwlock_rdlock(&g_blas_use);
}

static void use_end(void)
{
    if (!g.blas_env && t_loan_depth == 0) pthread_rwlock_unlock(&g_blas_use);
}

/* fp32 on a concrete backend, no availability check. */
static int sgemm_exec(wmat_gemm_backend b, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc,
                      int nt)
{
    if (M == 0 || N == 0) return WMAT_OK;
    if (K == 0 || alpha == 0.0f) b = WMAT_GEMM_REFERENCE; /* C = beta C, A and B not read */
    switch (b) {
    case WMAT_GEMM_OPENBLAS:
        use_begin();
        blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
        use_end();
        return WMAT_OK;
    case WMAT_GEMM_ONEDNN:
        return wmat__dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
    default:
        wmat__sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
        return WMAT_OK;
    }
}

static int s8_exec(wmat_gemm_backend b, int ta, int tb, int M, int N, int K, const int8_t *A, int lda,
                   const int8_t *B, int ldb, int acc, int32_t *C, int ldc, int nt)
{
    if (M == 0 || N == 0) return WMAT_OK;
    if (b == WMAT_GEMM_ONEDNN && K > 0)
        return wmat__dnnl_s8s8s32(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc, nt);
    if (b == WMAT_GEMM_OPENBLAS) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "OpenBLAS has no int8 GEMM");
    wmat__gemm_s8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc, nt);
    return WMAT_OK;
}

static int u8_exec(wmat_gemm_backend b, int ta, int tb, int M, int N, int K, const uint8_t *A, int lda,
                   const int8_t *B, int ldb, int acc, int32_t *C, int ldc, int nt)
{
    if (M == 0 || N == 0) return WMAT_OK;
    if (b == WMAT_GEMM_ONEDNN && K > 0)
        return wmat__dnnl_u8s8s32(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc, nt);
    if (b == WMAT_GEMM_OPENBLAS) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "OpenBLAS has no int8 GEMM");
    wmat__gemm_u8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc, nt);
    return WMAT_OK;
}

static float *widen_bf16(const uint16_t *x, int rows, int cols, int ld)
{
    float *w = wmat__malloc(sizeof(float) * (size_t)rows * (size_t)cols + 1);
    if (!w) return NULL;
    for (int i = 0; i < rows; i++) {
        const uint16_t *src = x + (size_t)i * ld;
        uint32_t *dst = (uint32_t *)(void *)(w + (size_t)i * cols);
        for (int j = 0; j < cols; j++) dst[j] = (uint32_t)src[j] << 16; /* exact */
    }
    return w;
}

/* bf16 on a concrete backend: oneDNN natively when `native`, otherwise
 * widened to fp32 and run by backend b's sgemm. */
static int bf16_exec(wmat_gemm_backend b, bool native, int ta, int tb, int M, int N, int K, float alpha,
                     const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C,
                     int ldc, int nt)
{
    if (M == 0 || N == 0) return WMAT_OK;
    if (K == 0 || alpha == 0.0f)
        return sgemm_exec(WMAT_GEMM_REFERENCE, ta, tb, M, N, K, alpha, NULL, lda, NULL, ldb, beta, C, ldc, 1);
    if (b == WMAT_GEMM_ONEDNN && native)
        return wmat__dnnl_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    float *wa = widen_bf16(A, ar, ac, lda);
    float *wb = wa ? widen_bf16(B, br, bc, ldb) : NULL;
    int rc;
    if (!wa || !wb)
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bf16 GEMM: no memory to widen %dx%dx%d to fp32", M, N, K);
    else
        rc = sgemm_exec(b, ta, tb, M, N, K, alpha, wa, ac, wb, bc, beta, C, ldc, nt);
    wmat__free(wa);
    wmat__free(wb);
    return rc;
}

/* ---------------------------------------------------------------- choice */

static wmat_gemm_backend pick_f32(wmat_gemm_backend want, int M, int N, int K, bool in_par)
{
    /* OpenBLAS's pool cannot be limited per call: inside a parallel region
     * it is usable only when it runs one thread anyway (its count outside
     * loans, fixed by the probe: a loan elsewhere must not change the
     * choice, and so the rounding, of this call). */
    bool ob = g.openblas_ok && (!in_par || g.blas_own_threads <= 1);
    if (want == WMAT_GEMM_REFERENCE) return WMAT_GEMM_REFERENCE;
    if (want == WMAT_GEMM_OPENBLAS && ob) return WMAT_GEMM_OPENBLAS;
    if (want == WMAT_GEMM_ONEDNN && g.dnnl_f32) return WMAT_GEMM_ONEDNN;
    if (g.dnnl_f32) {
        if (ob && g.openblas_native && M > 1 && N > 1 && (double)M * N * K <= SMALL_MNK)
            return WMAT_GEMM_OPENBLAS;
        /* Without AVX-512, oneDNN's AVX2 sgemm falls behind OpenBLAS's Zen /
         * Haswell kernels once the B operand (a weight matrix) leaves the
         * cache: 256x5632x2048 NT 62 vs 78 GFLOP/s, 256x32000x2048 62 vs 74
         * on a Zen 2 core (bench_peak), while on cache-sized panels and skinny
         * M (decode, small batches) oneDNN stays ahead. */
        if (ob && g.openblas_native && !g.cpu.avx512f && M >= 16 && (double)N * K >= LARGE_B) return WMAT_GEMM_OPENBLAS;
        return WMAT_GEMM_ONEDNN;
    }
    return ob ? WMAT_GEMM_OPENBLAS : WMAT_GEMM_REFERENCE;
}

wmat_gemm_backend wmat__sgemm_pick(wmat_gemm_backend b, int M, int N, int K)
{
    ensure_probe();
    return pick_f32(resolve(b), M, N, K, omp_in_parallel());
}

bool wmat__gemm_int8_native(wmat_gemm_backend b)
{
    ensure_probe();
    if (b == WMAT_GEMM_ONEDNN) return g.dnnl_s8 && g.dnnl_u8;
    return b == WMAT_GEMM_REFERENCE || b == WMAT_GEMM_AUTO;
}

bool wmat__gemm_bf16_native(wmat_gemm_backend b)
{
    ensure_probe();
    return (b == WMAT_GEMM_ONEDNN || b == WMAT_GEMM_AUTO) && g.dnnl_bf16;
}

int wmat__gemm_bf16_fast(wmat_gemm_backend b, char *why, size_t n)
{
    wmat_cpu_info ci;
    wmat__cpu_info(&ci);
    if (!ci.avx512_bf16 && !ci.amx_bf16) {
        snprintf(why, n, "this CPU has neither AVX512-BF16 nor AMX-BF16 (oneDNN would emulate bf16, slower than fp32)");
        return 0;
    }
    if (!wmat__gemm_bf16_native(b)) {
        if (b != WMAT_GEMM_AUTO && b != WMAT_GEMM_ONEDNN)
            snprintf(why, n, "the context's GEMM backend %s has none (oneDNN's matmul has)", wmat_gemm_backend_name(b));
        else
            snprintf(why, n, "%s", wmat__dnnl_built() ? "oneDNN's bf16 matmul failed its self-check here"
                                                     : "oneDNN is not in this build");
        snprintf(why + strlen(why), n - strlen(why), "; bf16 widened to fp32 would be slower than fp32");
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- self-checks */

static void fill_f32(float *x, size_t n, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * wmat_rng_uniform(&r) - 1.0f;
}

typedef struct {
    int M, N, K, ta, tb, pad;
    float alpha, beta;
} check_case;

static const check_case k_cases[] = {
    {37, 29, 67, 0, 1, 3, 0.5f, 0.25f},
    {128, 96, 160, 1, 0, 1, 1.0f, 0.0f}, /* C starts as NaN: beta == 0 must not read it */
    {1, 300, 64, 0, 0, 0, -1.5f, 1.0f},
    {70, 1, 33, 1, 1, 2, 2.0f, -0.5f},
};

typedef enum { CHK_F32, CHK_BF16 } chk_kind;

/* Run the fp32 (or bf16) check cases on backend b; false with a note on a
 * wrong result or an error. Errors are bounded by the standard
 * (K + 4) eps (|alpha| sum |a b| + |beta c|). */
static bool check_float(wmat_gemm_backend b, chk_kind kind, char *note, size_t cap)
{
    bool ok = true;
    for (size_t c = 0; c < sizeof k_cases / sizeof k_cases[0] && ok; c++) {
        const check_case *t = &k_cases[c];
        int ar = t->ta ? t->K : t->M, ac = t->ta ? t->M : t->K;
        int br = t->tb ? t->N : t->K, bc = t->tb ? t->K : t->N;
        int lda = ac + t->pad, ldb = bc + t->pad, ldc = t->N + t->pad;
        size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)t->M * ldc;
        float *A = wmat__malloc(sizeof(float) * na), *B = wmat__malloc(sizeof(float) * nb);
        float *C = wmat__malloc(sizeof(float) * nc), *C0 = wmat__malloc(sizeof(float) * nc);
        uint16_t *Ah = wmat__malloc(sizeof(uint16_t) * na), *Bh = wmat__malloc(sizeof(uint16_t) * nb);
        if (!A || !B || !C || !C0 || !Ah || !Bh) {
            snprintf(note, cap, "self-check: out of memory");
            ok = false;
            goto next;
        }
        fill_f32(A, na, 11 + c);
        fill_f32(B, nb, 23 + c);
        fill_f32(C0, nc, 37 + c);
        if (t->beta == 0.0f)
            for (size_t i = 0; i < nc; i++) C0[i] = NAN;
        if (kind == CHK_BF16) { /* inputs exactly representable in bf16 */
            for (size_t i = 0; i < na; i++) A[i] = wmat_bf16_to_f32(Ah[i] = wmat_f32_to_bf16(A[i]));
            for (size_t i = 0; i < nb; i++) B[i] = wmat_bf16_to_f32(Bh[i] = wmat_f32_to_bf16(B[i]));
        }
        memcpy(C, C0, sizeof(float) * nc);
        int nt = threads_for(0);
        int rc = kind == CHK_F32 ? sgemm_exec(b, t->ta, t->tb, t->M, t->N, t->K, t->alpha, A, lda, B, ldb,
                                              t->beta, C, ldc, nt)
                                 : bf16_exec(b, true, t->ta, t->tb, t->M, t->N, t->K, t->alpha, Ah, lda,
                                             Bh, ldb, t->beta, C, ldc, nt);
        if (rc != WMAT_OK) {
            snprintf(note, cap, "self-check case %zu: %s", c + 1, wmat_last_error());
            ok = false;
            goto next;
        }
        for (int i = 0; i < t->M && ok; i++)
            for (int j = 0; j < t->N; j++) {
                double s = 0.0, sa = 0.0;
                for (int k = 0; k < t->K; k++) {
                    double a = t->ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                    double bb = t->tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                    s += a * bb;
                    sa += fabs(a * bb);
                }
                double c0 = C0[(size_t)i * ldc + j];
                double ref = t->alpha * s + (t->beta != 0.0f ? t->beta * c0 : 0.0);
                double bound = (t->K + 4) * (double)FLT_EPSILON *
                                   (fabs(t->alpha) * sa + (t->beta != 0.0f ? fabs(t->beta * c0) : 0.0)) +
                               1e-30;
                double got = C[(size_t)i * ldc + j];
                double err = fabs(got - ref);
                if (!(err <= bound)) { /* also catches NaN */
                    snprintf(note, cap, "self-check case %zu (%dx%dx%d): C[%d][%d] = %g, expected %g", c + 1,
                             t->M, t->N, t->K, i, j, got, ref);
                    ok = false;
                    break;
                }
            }
    next:
        wmat__free(A);
        wmat__free(B);
        wmat__free(C);
        wmat__free(C0);
        wmat__free(Ah);
        wmat__free(Bh);
    }
    return ok;
}

/* int8 check with the extreme values that saturate 16-bit intermediate
 * sums (VPMADDUBSW without VNNI): rows of A at the type's extreme, columns
 * of B at -128, and accumulation onto large C values. */
static bool check_int8(wmat_gemm_backend b, bool u8, char *note, size_t cap)
{
    static const struct { int M, N, K, ta, tb, pad, acc; } cases[] = {
        {23, 37, 300, 0, 1, 5, 0},
        {40, 33, 129, 1, 0, 0, 1},
        {1, 65, 64, 0, 0, 3, 1},
    };
    bool ok = true;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0] && ok; c++) {
        int M = cases[c].M, N = cases[c].N, K = cases[c].K, ta = cases[c].ta, tb = cases[c].tb;
        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        int lda = ac + cases[c].pad, ldb = bc + cases[c].pad, ldc = N + cases[c].pad;
        size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)M * ldc;
        uint8_t *A = wmat__malloc(na);
        int8_t *B = wmat__malloc(nb);
        int32_t *C = wmat__malloc(sizeof(int32_t) * nc), *C0 = wmat__malloc(sizeof(int32_t) * nc);
        if (!A || !B || !C || !C0) {
            snprintf(note, cap, "self-check: out of memory");
            ok = false;
            goto next;
        }
        wmat_rng r;
        wmat_rng_seed(&r, 101 + c);
        for (size_t i = 0; i < na; i++) A[i] = (uint8_t)wmat_rng_u64(&r);
        for (size_t i = 0; i < nb; i++) B[i] = (int8_t)(uint8_t)wmat_rng_u64(&r);
        for (size_t i = 0; i < nc; i++) C0[i] = (int32_t)(wmat_rng_u64(&r) % 2000000001u) - 1000000000;
        /* op(A) row 0 all at the extreme, op(B) column 0 all -128 */
        for (int k = 0; k < K; k++) {
            A[ta ? (size_t)k * lda : (size_t)k] = u8 ? 255 : (uint8_t)(int8_t)-128;
            B[tb ? (size_t)k : (size_t)k * ldb] = -128;
        }
        if (M > 1)
            for (int k = 0; k < K; k++) A[ta ? (size_t)k * lda + 1 : (size_t)lda + k] = u8 ? 255 : 127;
        memcpy(C, C0, sizeof(int32_t) * nc);
        int nt = threads_for(0);
        int rc = u8 ? u8_exec(b, ta, tb, M, N, K, A, lda, B, ldb, cases[c].acc, C, ldc, nt)
                    : s8_exec(b, ta, tb, M, N, K, (const int8_t *)A, lda, B, ldb, cases[c].acc, C, ldc, nt);
        if (rc != WMAT_OK) {
            snprintf(note, cap, "self-check case %zu: %s", c + 1, wmat_last_error());
            ok = false;
            goto next;
        }
        for (int i = 0; i < M && ok; i++)
            for (int j = 0; j < N; j++) {
                int64_t s = cases[c].acc ? C0[(size_t)i * ldc + j] : 0;
                for (int k = 0; k < K; k++) {
                    uint8_t av = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                    int64_t a = u8 ? (int64_t)av : (int64_t)(int8_t)av;
                    s += a * (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                }
                if (C[(size_t)i * ldc + j] != s) {
                    snprintf(note, cap, "self-check case %zu (%dx%dx%d): C[%d][%d] = %d, expected %lld", c + 1,
                             M, N, K, i, j, (int)C[(size_t)i * ldc + j], (long long)s);
                    ok = false;
                    break;
                }
            }
    next:
        wmat__free(A);
        wmat__free(B);
        wmat__free(C);
        wmat__free(C0);
    }
    return ok;
}

/* ---------------------------------------------------------------- probe */

/* Tests make a self-check fail on purpose with WMAT_TEST_FAIL_CHECK naming
 * the backend ("openblas", "onednn"), to exercise the fallback. */
static bool fail_on_purpose(const char *backend, bool ok, char *note, size_t cap)
{
    const char *v = getenv("WMAT_TEST_FAIL_CHECK");
    if (!ok || !v || strcmp(v, backend) != 0) return ok;
    snprintf(note, cap, "failed on purpose (WMAT_TEST_FAIL_CHECK)");
    return false;
}

/* The status line, written once at the end of the probe. */
static void write_status(void)
{
    char dn[600];
    if (!wmat__dnnl_built())
        snprintf(dn, sizeof dn, "onednn not in this build");
    else
        snprintf(dn, sizeof dn, "onednn %s", g.dnnl_note);
    const char *autodesc = g.dnnl_f32
                               ? (g.openblas_ok && g.openblas_native ? "auto fp32: onednn, openblas up to 64^3"
                                                                     : "auto fp32: onednn")
                               : (g.openblas_ok ? "auto fp32: openblas" : "auto fp32: reference");
    char def[64] = "";
    if (g.default_backend != WMAT_GEMM_AUTO)
        snprintf(def, sizeof def, "; default %s (WMAT_GEMM_BACKEND)", wmat_gemm_backend_name(g.default_backend));
    char th[160];
    if (g.blas_env)
        snprintf(th, sizeof th, "per call from the caller's context; openblas %d from the environment",
                 g.blas_own_threads);
    else
        snprintf(th, sizeof th, "per call from the caller's context; openblas 1, GEMMs split over OpenMP threads");
    snprintf(g.status, sizeof g.status, "openblas %s; %s; %s%s; int8 %s; bf16 %s; threads %s", g.openblas_note, dn,
             autodesc, def, g.dnnl_s8 && g.dnnl_u8 ? "onednn" : "reference", g.dnnl_bf16 ? "onednn" : "widened to fp32",
             th);
}

static void probe(void)
{
    wmat_cpu_info *ci = &g.cpu;
    wmat__cpu_info(ci);
    /* OpenBLAS runs one thread unless the user set its count (OpenBLAS
     * reads OMP_NUM_THREADS too): each call's threads are then the
     * caller's, split over OpenMP. */
    g.blas_env = env_set("OPENBLAS_NUM_THREADS") || env_set("GOTO_NUM_THREADS") || env_set("OMP_NUM_THREADS");
    if (!g.blas_env) wmat__blas_set_num_threads(1);
    g.blas_own_threads = wmat__blas_num_threads();

    /* OpenBLAS: where its core came from, whether it suits the CPU, and a
     * self-check (the kernels may have been forced by OPENBLAS_CORETYPE). */
    const char *core = wmat__blas_corename();
    const char *user = getenv("OPENBLAS_CORETYPE"), *guard = getenv(WMAT_BLAS_TUNE_GUARD);
    wmat_blas_tune real;
    wmat__blas_tune_decide(core, wmat__blas_config(), ci, NULL, NULL, &real);
    g.openblas_native = real.core_rank < 0 || real.core_rank >= real.cpu_rank;
    bool by_wmat = user && guard && strcmp(user, guard) == 0;
    if (!user)
        snprintf(g.core_source, sizeof g.core_source, "autodetected");
    else
        snprintf(g.core_source, sizeof g.core_source, "OPENBLAS_CORETYPE=%.32s set by %s", user,
                 by_wmat ? "wmat (re-exec)" : "the user");
    char chk[200] = "";
    g.openblas_ok = fail_on_purpose("openblas", check_float(WMAT_GEMM_OPENBLAS, CHK_F32, chk, sizeof chk), chk,
                                    sizeof chk);
    snprintf(g.openblas_note, sizeof g.openblas_note, "%s (%s)%s%s%s", core, g.core_source,
             g.openblas_native ? "" : ", generic kernels (slow)",
             g.openblas_ok ? ", self-check ok" : ": FAILED ",
             g.openblas_ok ? "" : chk);
    if (user && strcasecmp(user, core) != 0) { /* OpenBLAS did not know the name */
        size_t n = strlen(g.openblas_note);
        snprintf(g.openblas_note + n, sizeof g.openblas_note - n, "; OPENBLAS_CORETYPE asked for %.32s", user);
    }
    if (!g.openblas_ok && by_wmat) {
        size_t n = strlen(g.openblas_note);
        snprintf(g.openblas_note + n, sizeof g.openblas_note - n, "; not used for GEMM (rerun with --no-blas-tune)");
    } else if (!g.openblas_ok) {
        size_t n = strlen(g.openblas_note);
        snprintf(g.openblas_note + n, sizeof g.openblas_note - n, "; not used for GEMM");
    }

    /* oneDNN: each operation is checked on its own. */
    if (wmat__dnnl_built()) {
        char ver[128], why[4][200] = {"", "", "", ""};
        wmat__dnnl_describe(ver, sizeof ver);
        if (wmat__dnnl_init() == WMAT_OK) {
            g.dnnl_f32 = fail_on_purpose("onednn", check_float(WMAT_GEMM_ONEDNN, CHK_F32, why[0], sizeof why[0]),
                                         why[0], sizeof why[0]);
            g.dnnl_s8 = check_int8(WMAT_GEMM_ONEDNN, false, why[1], sizeof why[1]);
            g.dnnl_u8 = check_int8(WMAT_GEMM_ONEDNN, true, why[2], sizeof why[2]);
            g.dnnl_bf16 = check_float(WMAT_GEMM_ONEDNN, CHK_BF16, why[3], sizeof why[3]);
        } else {
            snprintf(why[0], sizeof why[0], "%s", wmat_last_error());
        }
        const bool ok[4] = {g.dnnl_f32, g.dnnl_s8, g.dnnl_u8, g.dnnl_bf16};
        static const char *const op[4] = {"f32", "s8s8", "u8s8", "bf16"};
        size_t n = (size_t)snprintf(g.dnnl_note, sizeof g.dnnl_note, "%.100s:", ver);
        for (int i = 0; i < 4 && n < sizeof g.dnnl_note; i++)
            n += (size_t)snprintf(g.dnnl_note + n, sizeof g.dnnl_note - n, " %s %s%s%s", op[i],
                                  ok[i] ? "ok" : "FAILED (", ok[i] ? "" : why[i], ok[i] ? "" : ")");
    }
    /* WMAT_GEMM_BACKEND=openblas|onednn|reference|auto: the default
     * backend of this process, for contexts that leave theirs at AUTO and
     * for calls without a context (the test suite runs once per backend).
     * Read here once: a fact of the process, not a setting. */
    g.default_backend = WMAT_GEMM_AUTO;
    const char *want = getenv("WMAT_GEMM_BACKEND");
    if (want && *want) {
        static const char *const names[] = {"auto", "openblas", "onednn", "reference"};
        for (int b = 0; b < 4; b++) {
            if (strcmp(want, names[b]) != 0) continue;
            bool avail = b == WMAT_GEMM_AUTO || b == WMAT_GEMM_REFERENCE || (b == WMAT_GEMM_OPENBLAS && g.openblas_ok) ||
                         (b == WMAT_GEMM_ONEDNN && g.dnnl_f32);
            if (avail) g.default_backend = (wmat_gemm_backend)b;
        }
    }
    wmat_clear_error();
    write_status();
}

/* ---------------------------------------------------------------- public */

int wmat_linalg_init(int n_threads)
{
    ensure_probe();
    /* The calling thread's OpenMP default: what contexts with n_threads
     * <= 0 and calls without a context use. OpenMP's own setting, kept
     * per thread by the runtime; a context with a count is not affected. */
    if (!env_set("OMP_NUM_THREADS")) omp_set_num_threads(n_threads > 0 ? n_threads : g.cpu.logical_cpus);
    return WMAT_OK;
}

void wmat__blas_use_begin(void)
{
    ensure_probe(); /* g.blas_env is fixed from here on, so begin and end agree */
    use_begin();
}

void wmat__blas_use_end(void) { use_end(); }

int wmat__blas_threads_begin(int n_threads)
{
    ensure_probe();
    int t = threads_for(n_threads);
    if (g.blas_env || omp_in_parallel() || t <= 1) return 0;
    if (t_loan_depth++ == 0) {
        pthread_rwlock_wrlock(&g_blas_use);
        t_loan_threads = 1;
    }
    if (t > t_loan_threads) {
        t_loan_threads = t;
        wmat__blas_set_num_threads(t);
    }
    return 1;
}

void wmat__blas_threads_end(int token)
{
    if (token != 1 || t_loan_depth <= 0) return;
    if (--t_loan_depth == 0) {
        wmat__blas_set_num_threads(g.blas_own_threads);
        pthread_rwlock_unlock(&g_blas_use);
    }
}

const char *wmat_linalg_status(void)
{
    ensure_probe();
    return g.status;
}

wmat_gemm_backend wmat_gemm_get_backend(void)
{
    ensure_probe();
    return g.default_backend;
}

const char *wmat_gemm_backend_name(wmat_gemm_backend b)
{
    switch (b) {
    case WMAT_GEMM_AUTO: return "auto";
    case WMAT_GEMM_OPENBLAS: return "openblas";
    case WMAT_GEMM_ONEDNN: return "onednn";
    case WMAT_GEMM_REFERENCE: return "reference";
    default: return "unknown";
    }
}

int wmat_gemm_backend_available(wmat_gemm_backend b)
{
    ensure_probe();
    switch (b) {
    case WMAT_GEMM_AUTO:
    case WMAT_GEMM_REFERENCE: return 1;
    case WMAT_GEMM_OPENBLAS: return g.openblas_ok;
    case WMAT_GEMM_ONEDNN: return g.dnnl_f32;
    default: return 0;
    }
}

/* fp32 on b (AUTO: the default) with n_threads (<= 0: the OpenMP default);
 * strict: an unavailable backend is an error instead of AUTO's choice. */
static int f32_on(wmat_gemm_backend b, bool strict, int n_threads, int ta, int tb, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    ensure_probe();
    int rc = check_args("sgemm", ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (rc != WMAT_OK) return rc;
    if ((int)b < WMAT_GEMM_AUTO || (int)b > WMAT_GEMM_REFERENCE)
        return wmat_set_error(WMAT_ERR_INVALID, "sgemm: no GEMM backend %d", (int)b);
    if (strict && b != WMAT_GEMM_AUTO && !wmat_gemm_backend_available(b))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "GEMM backend %s is not available",
                              wmat_gemm_backend_name(b));
    bool in_par = omp_in_parallel();
    wmat_gemm_backend use = pick_f32(resolve(b), M, N, K, in_par);
    int nt = threads_for(n_threads);
    rc = sgemm_exec(use, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
    if (rc != WMAT_OK && use != WMAT_GEMM_REFERENCE) /* e.g. oneDNN out of scratch memory */
        rc = sgemm_exec(WMAT_GEMM_REFERENCE, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
    return rc;
}

void wmat__sgemm_cfg(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)f32_on(b, false, n_threads, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int wmat__sgemm_on(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    return f32_on(b, true, n_threads, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void wmat_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)f32_on(WMAT_GEMM_AUTO, false, 0, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int wmat_sgemm_ctx(const wmat_context *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    return f32_on(ctx ? ctx->gemm : WMAT_GEMM_AUTO, false, ctx ? ctx->n_threads : 0, trans_a, trans_b, M, N, K, alpha,
                  A, lda, B, ldb, beta, C, ldc);
}

/* int8: b is AUTO (the default when it has int8 kernels, else AUTO's
 * pick), or a backend that must have a native kernel. */
static int i8_resolve(wmat_gemm_backend b, bool u8, wmat_gemm_backend *use)
{
    bool dn = u8 ? g.dnnl_u8 : g.dnnl_s8;
    if (b == WMAT_GEMM_AUTO && wmat__gemm_int8_native(g.default_backend)) b = g.default_backend;
    switch (b) {
    case WMAT_GEMM_AUTO: *use = dn ? WMAT_GEMM_ONEDNN : WMAT_GEMM_REFERENCE; return WMAT_OK;
    case WMAT_GEMM_REFERENCE: *use = b; return WMAT_OK;
    case WMAT_GEMM_ONEDNN:
        if (dn) { *use = b; return WMAT_OK; }
        break;
    default: break;
    }
    return wmat_set_error(WMAT_ERR_UNSUPPORTED, "no %s int8 GEMM on backend %s", u8 ? "u8s8s32" : "s8s8s32",
                          wmat_gemm_backend_name(b));
}

int wmat__gemm_s8s8s32_on(wmat_gemm_backend b, int n_threads, int ta, int tb, int M, int N, int K, const int8_t *A,
                          int lda, const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc)
{
    ensure_probe();
    wmat_gemm_backend use;
    int rc = check_args("gemm_s8s8s32", ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (rc == WMAT_OK) rc = i8_resolve(b, false, &use);
    if (rc != WMAT_OK) return rc;
    return s8_exec(use, ta, tb, M, N, K, A, lda, B, ldb, accumulate, C, ldc, threads_for(n_threads));
}

int wmat__gemm_u8s8s32_on(wmat_gemm_backend b, int n_threads, int ta, int tb, int M, int N, int K, const uint8_t *A,
                          int lda, const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc)
{
    ensure_probe();
    wmat_gemm_backend use;
    int rc = check_args("gemm_u8s8s32", ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (rc == WMAT_OK) rc = i8_resolve(b, true, &use);
    if (rc != WMAT_OK) return rc;
    return u8_exec(use, ta, tb, M, N, K, A, lda, B, ldb, accumulate, C, ldc, threads_for(n_threads));
}

int wmat__gemm_bf16_on(wmat_gemm_backend b, int n_threads, int ta, int tb, int M, int N, int K, float alpha,
                       const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    ensure_probe();
    int rc = check_args("gemm_bf16", ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (rc != WMAT_OK) return rc;
    if (b != WMAT_GEMM_AUTO && !wmat_gemm_backend_available(b))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "GEMM backend %s is not available",
                              wmat_gemm_backend_name(b));
    b = resolve(b);
    bool in_par = omp_in_parallel();
    int nt = threads_for(n_threads);
    if ((b == WMAT_GEMM_AUTO || b == WMAT_GEMM_ONEDNN) && g.dnnl_bf16) {
        rc = bf16_exec(WMAT_GEMM_ONEDNN, true, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
        if (rc == WMAT_OK) return rc;
        /* else (unlikely: the check passed) widen and go on */
    }
    wmat_gemm_backend f = pick_f32(b, M, N, K, in_par);
    return bf16_exec(f, false, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
}

int wmat__packed_gemm_create(wmat__packed_gemm **out, wmat_gemm_backend want, const float *W, int N, int K)
{
    *out = NULL;
    ensure_probe();
    want = resolve(want);
    if (want == WMAT_GEMM_OPENBLAS || want == WMAT_GEMM_REFERENCE)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "packed GEMM: the %s backend is selected",
                              wmat_gemm_backend_name(want));
    if (!g.dnnl_f32) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "packed GEMM: oneDNN is not available");
    if (N <= 0 || K <= 0 || !W) return wmat_set_error(WMAT_ERR_INVALID, "packed GEMM: bad shape %d x %d", N, K);
    return wmat__dnnl_packed_create(out, W, N, K);
}

int wmat__packed_gemm_apply(const wmat__packed_gemm *p, const float *X, int M, float *Y, int accumulate, int n_threads)
{
    if (M <= 0) return WMAT_OK;
    return wmat__dnnl_packed_apply(p, X, M, Y, accumulate, threads_for(n_threads));
}

size_t wmat__packed_gemm_bytes(const wmat__packed_gemm *p) { return p ? wmat__dnnl_packed_bytes(p) : 0; }

void wmat__packed_gemm_free(wmat__packed_gemm *p)
{
    if (p) wmat__dnnl_packed_free(p);
}
