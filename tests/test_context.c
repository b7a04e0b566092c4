/* Execution contexts are independent: runtimes with different thread
 * counts, GEMM backends and int8-activation choices in one process give,
 * bit for bit, what each gives alone
 *   - used in turns, while the calling thread's OpenMP default changes
 *     (wmat_linalg_init), then again while another thread keeps lending
 *     OpenBLAS threads to SVDs (what analysis does);
 *   - used at the same time from one thread each, with the lending thread
 *     running too.
 * Over fp32 weights, GGUF q8_0 weights and packed 4-bit weights (the qpacked
 * kernels, symmetric g32 and asymmetric g64). An OpenBLAS GEMM issued while
 * another thread holds a loan waits for it and gives the bits it gives
 * without one. No process-wide setting is left to change: CTest
 * check_globals (scripts/check-globals.sh) holds the library's writable data
 * to a documented list.
 */
#include "test_util.h"

#include "linalg/dense.h"
#include "linalg/linalg.h"
#include "quant/qmodel.h"
#include "wop/qstore.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

enum { T_BATCH = 32, N_DECODE = 8, N_POS = T_BATCH + N_DECODE, MAX_SET = 4 };

typedef struct {
    int threads;
    wmat_gemm_backend gemm;
    int act8;
} setting;

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.keep_stored = 1;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

/* The runtime keeps a copy of the context. */
static wmat_runtime *make(wmat_model *m, const setting *s)
{
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = s->threads;
    ctx.gemm = s->gemm;
    ctx.act8 = s->act8;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T_BATCH;
    rp.kv_cache_len = N_DECODE;
    rp.ctx = &ctx;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    return rt;
}

/* A batched forward of T_BATCH tokens, then N_DECODE decode steps: all
 * logits (N_POS, V). No cmocka assertion: also run on worker threads. */
static int run(wmat_runtime *rt, int V, float *out)
{
    int32_t ids[T_BATCH];
    for (int t = 0; t < T_BATCH; t++) ids[t] = (t * 29 + 3) % V;
    int rc = wmat_forward(rt, ids, T_BATCH, out);
    for (int p = 0; p < N_DECODE && rc == WMAT_OK; p++)
        rc = wmat_decode(rt, ids[p], p, out + (size_t)(T_BATCH + p) * V);
    return rc;
}

static const char *describe(const setting *s, char *buf, size_t n)
{
    snprintf(buf, n, "%d thread%s, %s, act8 %d", s->threads, s->threads == 1 ? "" : "s", wmat_gemm_backend_name(s->gemm),
             s->act8);
    return buf;
}

static void assert_same(const float *want, const float *got, size_t n, const setting *s, const char *how)
{
    if (memcmp(want, got, n * sizeof(float)) == 0) return;
    size_t i = 0;
    while (memcmp(want + i, got + i, sizeof(float)) == 0) i++;
    char d[96];
    fail_msg("%s (%s): logit %zu is %.9g, alone %.9g", describe(s, d, sizeof d), how, i, (double)got[i], (double)want[i]);
}

/* ---- OpenBLAS loans from another thread */

typedef struct {
    atomic_int stop;
    int n_svd, rc;
} lender;

/* SVDs of a 96 x 96 matrix with OpenBLAS's threads lent, until told to stop
 * (at least once). */
static void *lend_loop(void *p)
{
    lender *l = p;
    enum { n = 96 };
    double *A = malloc(sizeof(double) * n * n), *s = malloc(sizeof(double) * n);
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    do {
        for (int i = 0; i < n * n; i++) A[i] = wmat_rng_normal(&r);
        int tok = wmat__blas_threads_begin(2);
        int rc = wmat__dgesdd(n, n, A, n, s, NULL, n, NULL, n);
        wmat__blas_threads_end(tok);
        if (rc != WMAT_OK) l->rc = rc;
        l->n_svd++;
    } while (!atomic_load(&l->stop));
    free(A);
    free(s);
    return NULL;
}

/* ---- the check */

typedef struct {
    wmat_runtime *rt;
    int V, rounds;
    const float *want;
    float *buf;
    size_t n;
    int rc, mismatches;
} worker;

static void *work(void *p)
{
    worker *w = p;
    for (int i = 0; i < w->rounds; i++) {
        int rc = run(w->rt, w->V, w->buf);
        if (rc != WMAT_OK) w->rc = rc;
        else if (memcmp(w->buf, w->want, w->n * sizeof(float)) != 0) w->mismatches++;
    }
    return NULL;
}

static void check_settings(wmat_model *m, const setting *set, int ns)
{
    const int V = wmat_model_config(m)->vocab_size;
    const size_t n = (size_t)N_POS * V;
    float *alone[MAX_SET], *got = malloc(n * sizeof(float));
    wmat_runtime *rt[MAX_SET];
    char d[96];
    assert_true(ns <= MAX_SET);

    /* each alone: the only runtime in the process */
    for (int i = 0; i < ns; i++) {
        alone[i] = malloc(n * sizeof(float));
        wmat_runtime *r = make(m, &set[i]);
        TU_OK(run(r, V, alone[i]));
        wmat_runtime_free(r);
        for (size_t k = 0; k < n; k++)
            if (!isfinite(alone[i][k])) fail_msg("%s: logit %zu is %g", describe(&set[i], d, sizeof d), k, (double)alone[i][k]);
    }
    for (int i = 1; i < ns; i++) { /* the settings do reach the kernels: results differ in the last bits */
        size_t diff = 0;
        for (size_t k = 0; k < n; k++) diff += alone[i][k] != alone[0][k];
        print_message("  %s vs %s: %zu of %zu logits differ\n", describe(&set[i], d, sizeof d), "the first", diff, n);
    }

    /* all alive, used in turns: between turns the calling thread's OpenMP
     * default moves; in the second round another thread keeps lending
     * OpenBLAS threads to SVDs */
    for (int i = 0; i < ns; i++) rt[i] = make(m, &set[i]);
    const int omp_before = omp_get_max_threads();
    pthread_t lt;
    lender l = {.n_svd = 0, .rc = WMAT_OK};
    atomic_init(&l.stop, 0);
    for (int round = 0; round < 2; round++) {
        if (round) assert_int_equal(pthread_create(&lt, NULL, lend_loop, &l), 0);
        for (int i = ns - 1; i >= 0; i--) {
            TU_OK(wmat_linalg_init(1 + (round + i) % 3));
            TU_OK(run(rt[i], V, got));
            assert_same(alone[i], got, n, &set[i], round ? "in turns, OpenBLAS threads lent elsewhere" : "in turns");
        }
    }
    TU_OK(wmat_linalg_init(omp_before));

    /* at the same time: one thread per runtime, the lender still going */
    worker w[MAX_SET];
    pthread_t th[MAX_SET];
    for (int i = 0; i < ns; i++) {
        w[i] = (worker){rt[i], V, 3, alone[i], malloc(n * sizeof(float)), n, WMAT_OK, 0};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < ns; i++) pthread_join(th[i], NULL);
    atomic_store(&l.stop, 1);
    pthread_join(lt, NULL);
    TU_OK(l.rc);
    print_message("  concurrent: %d runtimes x 3 runs, %d SVDs on lent OpenBLAS threads meanwhile\n", ns, l.n_svd);
    for (int i = 0; i < ns; i++) {
        if (w[i].rc != WMAT_OK) fail_msg("%s: concurrent run failed (%d)", describe(&set[i], d, sizeof d), w[i].rc);
        if (w[i].mismatches)
            fail_msg("%s: %d of 3 concurrent runs differ from the run alone", describe(&set[i], d, sizeof d), w[i].mismatches);
        free(w[i].buf);
    }

    for (int i = 0; i < ns; i++) {
        wmat_runtime_free(rt[i]);
        free(alone[i]);
    }
    free(got);
}

/* An fp32 backend other than `not` to set against it (AUTO if none). */
static wmat_gemm_backend other_than(wmat_gemm_backend not)
{
    static const wmat_gemm_backend pref[] = {WMAT_GEMM_ONEDNN, WMAT_GEMM_OPENBLAS, WMAT_GEMM_REFERENCE};
    for (int i = 0; i < 3; i++)
        if (pref[i] != not && wmat_gemm_backend_available(pref[i])) return pref[i];
    return WMAT_GEMM_AUTO;
}

static wmat_gemm_backend or_auto(wmat_gemm_backend b) { return wmat_gemm_backend_available(b) ? b : WMAT_GEMM_AUTO; }

static void test_fp32_weights(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    const setting set[] = {
        {1, WMAT_GEMM_REFERENCE, -1},
        {2, other_than(WMAT_GEMM_REFERENCE), -1},
        {3, or_auto(WMAT_GEMM_OPENBLAS), -1},
        {2, WMAT_GEMM_AUTO, -1},
    };
    check_settings(m, set, 4);
    wmat_model_free(m);
}

/* GGUF q8_0 weights: the int8-activation choice is per runtime too. */
static void test_q8_0_weights(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    const char *tmp = tu_tmp("ctx-q8.gguf");
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = WMAT_Q8_0;
    TU_OK(wmat_model_save(m, tmp, &sp));
    wmat_model_free(m);
    m = load(tmp);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "q8_0");
    const setting set[] = {
        {1, WMAT_GEMM_AUTO, 1},
        {2, WMAT_GEMM_REFERENCE, 0},
        {3, or_auto(WMAT_GEMM_OPENBLAS), 1},
    };
    check_settings(m, set, 3);
    wmat_model_free(m);
}

/* Round-to-nearest 4-bit codes of W (rows, cols) in groups along inputs:
 * symmetric (zero 8) or asymmetric, group g. */
static void rtn4(wmat_qresult *q, const float *W, int64_t rows, int64_t cols, int sym, int g)
{
    TU_OK(wmat_qresult_alloc(q, 4, sym, WMAT_QAXIS_IN, g, rows, cols, 0));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < cols / g; b++) {
            const float *x = W + r * cols + b * g;
            uint8_t *c = q->codes + r * cols + b * g;
            const int64_t gi = r * (cols / g) + b;
            float lo = x[0], hi = x[0];
            for (int j = 1; j < g; j++) lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
            float s, z;
            if (sym) {
                s = fmaxf(fabsf(lo), fabsf(hi)) / 7.0f;
                z = 8.0f;
            } else {
                s = (hi - lo) / 15.0f;
                z = s > 0.0f ? fminf(fmaxf(roundf(-lo / s), 0.0f), 15.0f) : 0.0f;
            }
            if (!(s > 0.0f)) s = 1.0f;
            q->scales[gi] = s;
            q->zeros[gi] = z;
            for (int j = 0; j < g; j++) {
                const float v = roundf(x[j] / s) + z;
                c[j] = (uint8_t)(v < 0.0f ? 0.0f : v > 15.0f ? 15.0f : v);
            }
        }
}

/* Packed weights (the qpacked kernels): even layers symmetric 4-bit g32
 * (on AVX2 the q4_0 int8-activation row kernel), odd layers asymmetric g64. */
static void test_qpacked_weights(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    const wmat_config *c = wmat_model_config(m);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k);
            wmat_qresult q;
            rtn4(&q, t->data, t->shape[0], t->shape[1], l % 2 == 0, l % 2 == 0 ? 32 : 64);
            TU_OK(wmat_model_set_quantized(m, t->name, &q));
            wmat_qresult_free(&q);
        }
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 1, WMAT_LIN_DOWN)), "qpacked");
    const setting set[] = {
        {1, WMAT_GEMM_REFERENCE, 1},
        {2, WMAT_GEMM_AUTO, 0},
        {2, or_auto(WMAT_GEMM_OPENBLAS), 1},
    };
    check_settings(m, set, 3);
    wmat_model_free(m);
}

/* A thread holding an OpenBLAS loan for a while (the count it lent is
 * visible to everyone: OpenBLAS has one). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int held;
    double hold_s;
} holder;

static void *hold_loan(void *p)
{
    holder *h = p;
    int tok = wmat__blas_threads_begin(2);
    pthread_mutex_lock(&h->mu);
    h->held = tok ? 1 : -1;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    const double t0 = wmat__now();
    while (wmat__now() - t0 < h->hold_s) {
    }
    wmat__blas_threads_end(tok);
    return NULL;
}

/* OpenBLAS's results depend on its thread count (this is why a loan is
 * exclusive): an OpenBLAS GEMM started while another thread holds a loan
 * waits for it to end and gives the bits it gives with no loan anywhere. */
static void test_openblas_loan_is_exclusive(void **state)
{
    (void)state;
    if (!wmat_gemm_backend_available(WMAT_GEMM_OPENBLAS) || wmat__blas_num_threads() != 1) {
        print_message("OpenBLAS not available or its thread count set by the environment\n");
        skip();
        return;
    }
    enum { M = 32, N = 256, K = 704 };
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
    float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    for (int i = 0; i < M * K; i++) A[i] = wmat_rng_normal(&r);
    for (int i = 0; i < N * K; i++) B[i] = wmat_rng_normal(&r);
    TU_OK(wmat__sgemm_on(WMAT_GEMM_OPENBLAS, 1, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N));
    /* what the same call gives on lent threads, in the lending thread */
    int tok = wmat__blas_threads_begin(2);
    assert_int_equal(wmat__blas_num_threads(), 2);
    TU_OK(wmat__sgemm_on(WMAT_GEMM_OPENBLAS, 1, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N));
    wmat__blas_threads_end(tok);
    assert_int_equal(wmat__blas_num_threads(), 1);
    print_message("  OpenBLAS %dx%dx%d at 2 threads vs 1: %s\n", M, N, K,
                  memcmp(C1, C2, sizeof(float) * M * N) ? "different bits" : "same bits");
    /* from another thread during a loan: waits, then the loan-free bits */
    holder h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0.2};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_loan, &h), 0);
    pthread_mutex_lock(&h.mu);
    while (!h.held) pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    assert_int_equal(h.held, 1);
    const double t0 = wmat__now();
    TU_OK(wmat__sgemm_on(WMAT_GEMM_OPENBLAS, 1, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N));
    const double waited = wmat__now() - t0;
    pthread_join(t, NULL);
    print_message("  GEMM during another thread's loan waited %.3f s (loan held 0.2 s)\n", waited);
    assert_true(waited > 0.1);
    assert_memory_equal(C1, C2, sizeof(float) * M * N);
    assert_int_equal(wmat__blas_num_threads(), 1);
    free(A), free(B), free(C1), free(C2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_weights),
        cmocka_unit_test(test_q8_0_weights),
        cmocka_unit_test(test_qpacked_weights),
        cmocka_unit_test(test_openblas_loan_is_exclusive),
    };
    return tu_run_tests("context", tests, NULL, NULL);
}
