/* Internal interface of src/linalg: the one place that talks to BLAS
 * libraries (OpenBLAS, oneDNN) and owns the GEMM backend choice.
 *
 * All GEMMs are row-major with explicit leading dimensions (BLIS habit):
 *   op(A) is (M, K): A is stored (M, K) with lda >= K, or (K, M) with
 *   lda >= M when trans_a; op(B) is (K, N): B is stored (K, N) with
 *   ldb >= N, or (N, K) with ldb >= K when trans_b; C is (M, N), ldc >= N.
 * Every fast path has a plain reference twin (wmat__*_ref) and tests hold
 * each backend to a double-precision reference (tests/test_gemm.c).
 *
 * Settings are arguments (no process-wide setting is read): each entry
 * point takes a backend b and a thread count n_threads, which a caller with
 * a context passes from it (wmat_wexec.gemm / .n_threads).
 *   b: WMAT_GEMM_AUTO means the process default, wmat_gemm_get_backend():
 *      WMAT_GEMM_BACKEND from the environment, read once at the first use,
 *      else AUTO's pick by shape (gemm.c).
 *   n_threads: the threads of a call made outside an OpenMP parallel
 *      region; <= 0 means the calling thread's OpenMP default
 *      (omp_get_max_threads(), which wmat_linalg_init sets for its thread),
 *      the same count wmat_context_threads gives a context with 0. A call
 *      made inside a parallel region uses one thread, whatever the backend
 *      (a multithreaded OpenBLAS is never entered from inside one).
 * OpenBLAS itself runs one thread (set at the first use unless the user set
 * its count); its GEMMs are split over OpenMP threads, so only one pool
 * ever spins.
 */
#ifndef WMAT_LINALG_H
#define WMAT_LINALG_H

#include "../core/internal.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- fp32 */

/* wmat_sgemm on backend b with n_threads (see above): what a runtime and
 * the weight kinds call with their context's values. A backend that is not
 * available gets AUTO's pick; bad shapes set an error and leave C. */
void wmat__sgemm_cfg(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* The same, strict (tests, benchmarks, sysinfo): WMAT_ERR_UNSUPPORTED if
 * backend b is not available, WMAT_ERR_INVALID for bad shapes. */
int wmat__sgemm_on(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The portable reference: blocked C loops, OpenMP over output tiles
 * (n_threads <= 1 or inside a parallel region: serial). No allocation. */
void wmat__sgemm_ref(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc, int n_threads);

/* ---- int8: C (M, N) int32 = op(A) op(B) (+ C when accumulate), exact.
 * s8 x s8 is the general form; u8 x s8 (activations shifted to unsigned,
 * weights signed) is the form VNNI computes natively. Values may use the
 * full range (-128..127, 0..255); backends whose result is not exact for
 * extreme values on this CPU are rejected at init and never used.
 * b: AUTO (the default backend when it has int8 kernels, else oneDNN where
 * it passed its check, else the reference) or a backend with a native
 * kernel (WMAT_ERR_UNSUPPORTED otherwise: OpenBLAS has none). */
int wmat__gemm_s8s8s32_on(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K,
                          const int8_t *A, int lda, const int8_t *B, int ldb, int accumulate,
                          int32_t *C, int ldc);
int wmat__gemm_u8s8s32_on(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K,
                          const uint8_t *A, int lda, const int8_t *B, int ldb, int accumulate,
                          int32_t *C, int ldc);
void wmat__gemm_s8s8s32_ref(int trans_a, int trans_b, int M, int N, int K, const int8_t *A, int lda,
                            const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc,
                            int n_threads);
void wmat__gemm_u8s8s32_ref(int trans_a, int trans_b, int M, int N, int K, const uint8_t *A,
                            int lda, const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc,
                            int n_threads);

/* ---- bf16: C (M, N) f32 = alpha op(A) op(B) + beta C with A, B raw bf16
 * bits (wmat_f32_to_bf16). oneDNN computes it natively (matmul primitive);
 * other backends widen A and B to fp32 (exact) and run their sgemm, which
 * needs M*K + K*N floats of scratch: WMAT_ERR_NOMEM if that fails. */
int wmat__gemm_bf16_on(wmat_gemm_backend b, int n_threads, int trans_a, int trans_b, int M, int N, int K,
                       float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                       float beta, float *C, int ldc);

/* ---- fp32 with the weights packed once: Y (M, N) = X (M, K) W^T (+ Y),
 * W (N, K) row-major, as the runtime's batched linear layers use it. The
 * packed copy lives in the object (its own N*K floats and a little more), so
 * W may change or go away afterwards without effect. oneDNN only (a matmul
 * primitive with the weights reordered to its blocked layout, M given at
 * each call): small-M GEMMs skip packing B on every call, 1.1-1.3x a plain
 * dnnl_sgemm on mix4m's shapes at 2 threads. WMAT_ERR_UNSUPPORTED when
 * oneDNN is absent or b (AUTO: the process default) is a backend that
 * could not use it; callers then stay on plain GEMMs. apply runs on
 * n_threads threads outside parallel regions (<= 0: the linalg policy's). */
typedef struct wmat__packed_gemm wmat__packed_gemm;
int wmat__packed_gemm_create(wmat__packed_gemm **out, wmat_gemm_backend b, const float *W, int N, int K);
int wmat__packed_gemm_apply(const wmat__packed_gemm *p, const float *X, int M, float *Y, int accumulate, int n_threads);
size_t wmat__packed_gemm_bytes(const wmat__packed_gemm *p);
void wmat__packed_gemm_free(wmat__packed_gemm *p);

/* Which backend an fp32 GEMM on b would use for this shape, called here
 * (AUTO resolved to the default, then by shape; the parallel-region rule). */
wmat_gemm_backend wmat__sgemm_pick(wmat_gemm_backend b, int M, int N, int K);
/* Whether backend b has its own kernel for the int8 / bf16 variants on this
 * machine (int8: oneDNN when it passed its check, the reference; bf16:
 * oneDNN's matmul; AUTO: what AUTO would use). Others widen bf16 to fp32;
 * OpenBLAS has no int8 GEMM. */
bool wmat__gemm_int8_native(wmat_gemm_backend b);
bool wmat__gemm_bf16_native(wmat_gemm_backend b);
/* Whether bf16 GEMMs on b are worth running here: a CPU with AVX512-BF16
 * or AMX-BF16 and b's own kernel (above). 0 with the reason in why (n
 * bytes, a phrase) otherwise. What bf16 training and bf16 calibration ask. */
int wmat__gemm_bf16_fast(wmat_gemm_backend b, char *why, size_t n);

/* ---- threads */

/* Threads a call asking for n_threads made here and now uses: 1 inside an
 * OpenMP parallel region, else n_threads, else (<= 0) the calling thread's
 * OpenMP default. */
int wmat__linalg_threads(int n_threads);
/* LAPACK goes straight to OpenBLAS, which wmat keeps at one thread. For a
 * long LAPACK call (an SVD of a large matrix) a module may lend OpenBLAS its
 * context's threads: tok = wmat__blas_threads_begin(n_threads); ...LAPACKE
 * or dense.h...; wmat__blas_threads_end(tok). Both do nothing inside a
 * parallel region, for one thread, or when the user set OpenBLAS's count.
 * OpenBLAS's count is one per process (0.3.20 has no per-call or per-thread
 * count) and its results depend on it, so a loan is exclusive: every other
 * OpenBLAS call wmat makes (wmat__blas_use_begin/end below) waits while a
 * loan runs in another thread, and two loans run one after the other. A
 * runtime on OpenBLAS may so wait for another thread's SVD; its results do
 * not change (tests/test_context.c). Loans nest within a thread (the largest
 * count holds until the outermost ends). Between begin and end the lending
 * thread may call OpenBLAS itself (its GEMMs then run on the lent threads)
 * but must not start an OpenMP region that reaches OpenBLAS: those threads
 * would wait for the loan to end. OpenBLAS's idle pool spins for ~0.1 s
 * after the last lent call, slowing OpenMP work in that window. */
int wmat__blas_threads_begin(int n_threads);
void wmat__blas_threads_end(int token);
/* Around every OpenBLAS or LAPACKE call of src/linalg (a read lock a loan
 * takes for writing; nothing when the user set OpenBLAS's count). Not
 * inside wmat__blas_sgemm, which wmat's split calls from OpenMP threads. */
void wmat__blas_use_begin(void);
void wmat__blas_use_end(void);
/* OpenBLAS's current thread count and loaded kernel family ("Cooperlake"). */
int wmat__blas_num_threads(void);
const char *wmat__blas_corename(void);

/* ---- CPU and OpenBLAS core type */

typedef struct {
    char vendor[16];       /* "GenuineIntel", "AuthenticAMD" */
    char model[80];        /* brand string */
    int family, model_id, stepping;
    int logical_cpus;      /* CPUs this process may run on */
    /* Features usable here: the CPU has them and the OS saves their state. */
    bool sse42, avx, fma, avx2, avx512f, avx512dq, avx512bw, avx512vl, avx512_vnni,
        avx512_bf16, avx_vnni, amx_tile, amx_int8, amx_bf16;
} wmat_cpu_info;

void wmat__cpu_info(wmat_cpu_info *ci);

/* What to do about OpenBLAS's kernel choice. */
typedef struct {
    int needed;         /* 1: OpenBLAS would run faster with OPENBLAS_CORETYPE=value */
    char value[32];     /* the OPENBLAS_CORETYPE to set ("" when not needed) */
    int core_rank;      /* ISA level of the loaded core: 1 SSE, 2 AVX, 3 AVX2, 4 AVX-512; -1 unknown */
    int cpu_rank;       /* best ISA level the CPU and OS support */
    char reason[200];   /* one line for the status and sysinfo */
} wmat_blas_tune;

/* The decision, as a pure function of its inputs (tests drive it directly):
 * corename = openblas_get_corename(), config = openblas_get_config(),
 * user_coretype = getenv("OPENBLAS_CORETYPE") (NULL if unset), guard = the
 * value wmat's re-exec recorded (NULL if none). Never "needed" when
 * user_coretype is set, when OpenBLAS was not built with DYNAMIC_ARCH (the
 * variable would do nothing) or when the loaded core is already as good as
 * the CPU allows. */
void wmat__blas_tune_decide(const char *corename, const char *config, const wmat_cpu_info *ci,
                            const char *user_coretype, const char *guard, wmat_blas_tune *out);
/* The decision for this process (real corename, config, CPU and
 * environment). For testing the re-exec path, WMAT_TEST_OPENBLAS_CORENAME
 * replaces the corename OpenBLAS reports (nothing else reads it); for
 * testing the fallback, WMAT_TEST_FAIL_CHECK=openblas|onednn makes that
 * backend's self-check fail. */
void wmat__blas_tune_current(wmat_blas_tune *out);

/* Name of the guard variable wmat's re-exec sets with the value it chose. */
#define WMAT_BLAS_TUNE_GUARD "WMAT_BLAS_TUNED"

/* ---- sysinfo (the CLI's `wmat sysinfo` prints it via wmat_sysinfo_report) */

#define WMAT_N_BACKENDS 4 /* indexed by wmat_gemm_backend; [AUTO] unused */

typedef struct {
    wmat_cpu_info cpu;
    char openblas_config[256];
    char openblas_core[32];
    char openblas_core_source[96];  /* "autodetected", "OPENBLAS_CORETYPE=.. set by user", ... */
    wmat_blas_tune tune;            /* what a re-exec would do now */
    char onednn[128];               /* "2.6.3 (hash ..., runtime OpenMP, isa avx512_core_bf16)" or "not built" */
    bool available[WMAT_N_BACKENDS];
    int n_threads;                  /* threads of the report's GEMMs */
    int blas_threads, omp_threads;  /* what OpenBLAS and OpenMP use */
    char status[1536];              /* wmat_linalg_status() */
    /* Measured in this run (0: not measured / not available). */
    int f32_dim, f32_dim_ref;       /* square sizes timed (the reference gets a smaller one) */
    double f32_gflops[WMAT_N_BACKENDS];
    int int8_dim, int8_dim_ref;
    double s8_gops[WMAT_N_BACKENDS], u8_gops[WMAT_N_BACKENDS];
    int bf16_dim;
    double bf16_gflops[WMAT_N_BACKENDS];
    bool bf16_native[WMAT_N_BACKENDS];
    double copy_mib;
    double copy_gbs;                /* memcpy, bytes copied per second / 1e9, one thread */
} wmat_sysinfo;

/* Fill *si: facts, then measurements (quick: small sizes, well under a
 * second; else 2048^3 GEMMs, a few seconds). Calls wmat_linalg_init. */
int wmat__sysinfo_collect(wmat_sysinfo *si, int n_threads, int quick);
/* Write the report of *si to `out` (the text of wmat_sysinfo_report). */
int wmat__sysinfo_write(FILE *out, const wmat_sysinfo *si);

/* ---- private to src/linalg: the backends behind the dispatcher */

/* oneDNN (gemm_dnnl.c): nt is the thread count for this call. */
bool wmat__dnnl_built(void);
int wmat__dnnl_init(void);
void wmat__dnnl_describe(char *buf, size_t cap);
int wmat__dnnl_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, int nt);
int wmat__dnnl_s8s8s32(int ta, int tb, int M, int N, int K, const int8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt);
int wmat__dnnl_u8s8s32(int ta, int tb, int M, int N, int K, const uint8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt);
int wmat__dnnl_bf16(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                    const uint16_t *B, int ldb, float beta, float *C, int ldc, int nt);

/* The packed GEMM's oneDNN side (the wmat__packed_gemm_* wrappers decide
 * whether it may be used and with how many threads). */
int wmat__dnnl_packed_create(wmat__packed_gemm **out, const float *W, int N, int K);
int wmat__dnnl_packed_apply(const wmat__packed_gemm *p, const float *X, int M, float *Y, int accumulate, int nt);
size_t wmat__dnnl_packed_bytes(const wmat__packed_gemm *p);
void wmat__dnnl_packed_free(wmat__packed_gemm *p);

/* OpenBLAS (blas_tune.c): facts about the library as loaded. */
const char *wmat__blas_config(void);
void wmat__blas_set_num_threads(int n);
void wmat__blas_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);

#endif
