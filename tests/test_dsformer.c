/* DSFormer (SPECS H6): the `dsf` weight kind, the post-hoc `dsformer`
 * decomposition and the trainer's straight-through factorizer.
 *
 * - the kind: dequantize, batched forward (plain C and AVX2 panels, 1 and 3
 *   threads), one-row product and backward against D S built in double from
 *   the inputs (f32 and f16 storage, one- and two-byte indices); exactly s
 *   distinct increasing entries in every column; the stored size counts the
 *   indices; bad inputs refused;
 * - the post-hoc init equals its definition: D = U_k Sigma_k and S = the s
 *   largest |V_k^T| of each column (selected here by repeated argmax from
 *   the same SVD), and with refit D solves the normal equations
 *   (W - D S) S^T = 0 and never does worse; compression picks the largest k
 *   that fits;
 * - the adapter: forward and backward against a literal implementation in
 *   double (straight-through: the dense gradient to every entry of S~; fixed
 *   mask: the masked exact one); the mask follows S~ from step to step;
 *   density 1 is the low-rank product;
 * - export: the trained model's replaced linears are dsf (lowrank at s = k);
 *   saved as a native directory and loaded back, wmat_eval_tokens on it
 *   equals the trainer's own last evaluation; the CLI's train + eval agree
 *   too. */
#include "test_util.h"

#include "decomp/decomp.h"
#include "linalg/dense.h"
#include "train/adapter.h"
#include "train/train.h"
#include "wop/wop.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * wmat_rng_normal(&r);
}

static float rt(wmat_dtype dt, float v)
{
    uint16_t h;
    if (dt == WMAT_F32) return v;
    wmat_from_f32(&h, dt, &v, 1);
    wmat_to_f32(&v, &h, dt, 1);
    return v;
}

/* s distinct random rows of k for every column */
static void random_mask(int32_t *idx, int64_t cols, int64_t k, int64_t s, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t c = 0; c < cols; c++)
        for (int64_t q = 0; q < s; q++) {
            int32_t j;
            int dup;
            do {
                j = (int32_t)(wmat_rng_u64(&r) % (uint64_t)k);
                dup = 0;
                for (int64_t p = 0; p < q; p++) dup |= idx[c * s + p] == j;
            } while (dup);
            idx[c * s + q] = j;
        }
}

static void kind_case(int64_t rows, int64_t cols, int64_t k, int64_t s, wmat_dtype dt, int T)
{
    const wmat_wkind *kind = wmat__wkind_find("dsf");
    assert_non_null(kind);
    float *D = malloc(sizeof(float) * rows * k), *val = malloc(sizeof(float) * cols * s);
    int32_t *idx = malloc(sizeof(int32_t) * cols * s);
    fill(D, (size_t)(rows * k), 3 + (uint64_t)k, 0.3f);
    fill(val, (size_t)(cols * s), 5 + (uint64_t)s, 1.0f);
    random_mask(idx, cols, k, s, 7);
    void *obj = NULL;
    TU_OK(wmat__dsf_create(dt, rows, cols, k, s, D, idx, val, &obj));
    wmat_tensor W;
    memset(&W, 0, sizeof W);
    wmat__tensor_own_obj(&W, rows, cols, obj);
    assert_ptr_equal(wmat__wkind_of(&W), kind);
    int64_t kk, ss;
    wmat__dsf_shape(&W, &kk, &ss);
    assert_int_equal(kk, k);
    assert_int_equal(ss, s);
    /* the reference W = D S in double, from the stored (rounded) inputs */
    double *Wr = calloc((size_t)(rows * cols), sizeof(double));
    for (int64_t c = 0; c < cols; c++)
        for (int64_t q = 0; q < s; q++) {
            const int32_t j = idx[c * s + q];
            const double v = rt(dt, val[c * s + q]);
            for (int64_t r = 0; r < rows; r++) Wr[r * cols + c] += (double)rt(dt, D[r * k + j]) * v;
        }
    /* exactly s entries per column, increasing, each one of the inputs' */
    int32_t *ci = malloc(sizeof(int32_t) * s);
    float *cv = malloc(sizeof(float) * s);
    for (int64_t c = 0; c < cols; c++) {
        wmat__dsf_column(&W, c, ci, cv);
        for (int64_t q = 0; q < s; q++) {
            assert_true(ci[q] >= 0 && ci[q] < k);
            if (q) assert_true(ci[q] > ci[q - 1]);
            int found = 0;
            for (int64_t p = 0; p < s; p++)
                if (idx[c * s + p] == ci[q]) found = 1, assert_true(cv[q] == rt(dt, val[c * s + p]));
            assert_true(found);
        }
    }
    /* size: D, the values and one or two index bytes per entry */
    const uint64_t es = dt == WMAT_F16 ? 2 : 4, iw = k <= 256 ? 1 : 2;
    assert_true(kind->nbytes(&W) == (uint64_t)(rows * k) * es + (uint64_t)(cols * s) * (es + iw));
    assert_true(kind->nbytes(&W) == wmat__dsformer_bytes(rows, cols, k, s, dt));
    /* dequantize */
    float *Wd = malloc(sizeof(float) * rows * cols);
    kind->dequant_rows(&W, 0, rows, Wd);
    for (int64_t i = 0; i < rows * cols; i++)
        if (!(fabs(Wd[i] - Wr[i]) <= 1e-5 * (1 + fabs(Wr[i])))) fail_msg("dequant[%lld] %g vs %g", (long long)i, Wd[i], Wr[i]);
    /* products */
    float *X = malloc(sizeof(float) * T * cols), *Y = malloc(sizeof(float) * T * rows), *Y1 = malloc(sizeof(float) * T * rows);
    float *dY = malloc(sizeof(float) * T * rows), *dX = malloc(sizeof(float) * T * cols), *dX1 = malloc(sizeof(float) * T * cols);
    double *Yr = calloc((size_t)T * rows, sizeof(double)), *dXr = calloc((size_t)T * cols, sizeof(double));
    fill(X, (size_t)T * cols, 11, 1.0f);
    fill(dY, (size_t)T * rows, 13, 1.0f);
    double ymax = 0, dxmax = 0;
    for (int t = 0; t < T; t++) {
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < cols; c++) Yr[t * rows + r] += (double)X[t * cols + c] * Wr[r * cols + c];
            ymax = fmax(ymax, fabs(Yr[t * rows + r]));
        }
        for (int64_t c = 0; c < cols; c++) {
            for (int64_t r = 0; r < rows; r++) dXr[t * cols + c] += (double)dY[t * rows + r] * Wr[r * cols + c];
            dxmax = fmax(dxmax, fabs(dXr[t * cols + c]));
        }
    }
    const int isas[2] = {WMAT_ISA_REF, WMAT_ISA_AVX2};
    for (int ii = 0; ii < 2; ii++)
        for (int nt = 1; nt <= 3; nt += 2) {
            wmat_wexec ex = wmat__wexec_from(NULL);
            ex.n_threads = nt;
            ex.isa = isas[ii] < ex.isa ? isas[ii] : ex.isa;
            void *ws = malloc(kind->ws_bytes(&W, T, &ex) + 64);
            kind->forward(&W, X, Y, T, 0, ws, &ex);
            for (size_t i = 0; i < (size_t)T * rows; i++)
                if (!(fabs(Y[i] - Yr[i]) <= 1e-5 * ymax)) fail_msg("forward (isa %d, %d threads)[%zu] %g vs %g", ex.isa, nt, i, Y[i], Yr[i]);
            kind->backward(&W, dY, dX, T, 0, ws, &ex);
            for (size_t i = 0; i < (size_t)T * cols; i++)
                if (!(fabs(dX[i] - dXr[i]) <= 1e-5 * dxmax)) fail_msg("backward (isa %d)[%zu] %g vs %g", ex.isa, i, dX[i], dXr[i]);
            /* the thread count does not change a bit */
            if (nt == 1) {
                memcpy(Y1, Y, sizeof(float) * T * rows);
                memcpy(dX1, dX, sizeof(float) * T * cols);
            } else {
                assert_memory_equal(Y, Y1, sizeof(float) * T * rows);
                assert_memory_equal(dX, dX1, sizeof(float) * T * cols);
            }
            /* one row at a time */
            for (int t = 0; t < T; t++) {
                TU_OK(wmat__wop_matvec(&W, X + t * cols, Y + t * rows, 0, &ex));
                for (int64_t r = 0; r < rows; r++)
                    if (!(fabs(Y[t * rows + r] - Yr[t * rows + r]) <= 1e-5 * ymax)) fail_msg("one-row product differs");
            }
            free(ws);
        }
    wmat__tensor_free_data(&W);
    free(D), free(val), free(idx), free(Wr), free(ci), free(cv), free(Wd), free(X), free(Y), free(Y1), free(dY), free(dX),
        free(dX1), free(Yr), free(dXr);
}

/* parts as saved, with an optional replacement of the index array */
typedef struct {
    wmat_wpart parts[WMAT_WPART_MAX];
    int n;
    const void *idx;
} store;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    store *st = user;
    for (int i = 0; i < st->n; i++) {
        const wmat_wpart *p = &st->parts[i];
        if (strcmp(p->suffix, suffix)) continue;
        if (p->dtype != dtype || p->ndim != ndim || p->shape[0] != d0 || (ndim == 2 && p->shape[1] != d1))
            return wmat_set_error(WMAT_ERR_FORMAT, "store: %s has another dtype or shape", suffix);
        *data = !strcmp(suffix, ".dsf_idx") && st->idx ? st->idx : p->data;
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_FORMAT, "store: no %s", suffix);
}

/* Hostile index arrays: an index >= k, a repeated or descending one. */
static void hostile_indices(void)
{
    const wmat_wkind *kind = wmat__wkind_find("dsf");
    enum { R = 12, C = 10, K = 6, S = 3 };
    float D[R * K], val[C * S];
    int32_t idx[C * S];
    fill(D, R * K, 1, 1.0f);
    fill(val, C * S, 2, 1.0f);
    random_mask(idx, C, K, S, 3);
    void *obj = NULL;
    TU_OK(wmat__dsf_create(WMAT_F32, R, C, K, S, D, idx, val, &obj));
    wmat_tensor W;
    memset(&W, 0, sizeof W);
    wmat__tensor_own_obj(&W, R, C, obj);
    cJSON *desc = cJSON_CreateObject();
    store st = {.n = 0};
    TU_OK(kind->save(&W, desc, st.parts, &st.n, "t"));
    void *o = NULL;
    TU_OK(kind->load(desc, R, C, get_part, &st, "t", &o));
    kind->free(o);
    uint8_t bad[C * S];
    const int cases = 3;
    for (int c = 0; c < cases; c++) {
        memcpy(bad, st.parts[1].data, sizeof bad);
        if (c == 0) bad[4 * S + 2] = K;                 /* past the last row */
        if (c == 1) bad[7 * S + 1] = bad[7 * S];        /* twice */
        if (c == 2) bad[2 * S] = bad[2 * S + 2] + 0;    /* descending */
        st.idx = bad;
        o = NULL;
        assert_int_equal(kind->load(desc, R, C, get_part, &st, "t", &o), WMAT_ERR_FORMAT);
        assert_null(o);
        assert_true(strstr(wmat_last_error(), "t: column") != NULL);
    }
    cJSON_Delete(desc);
    wmat__tensor_free_data(&W);
}

static void test_kind(void **state)
{
    (void)state;
    kind_case(40, 24, 10, 3, WMAT_F32, 5);
    kind_case(37, 50, 17, 17, WMAT_F32, 19); /* s = k, T past one panel */
    kind_case(33, 20, 8, 1, WMAT_F16, 3);
    kind_case(300, 280, 270, 5, WMAT_F32, 17); /* k > 256: two-byte indices */
    kind_case(20, 9, 12, 4, WMAT_F16, 2); /* k past cols: the kind allows it */
    /* refused: s > k, an index out of range, an index twice, bf16 */
    float D[4 * 3] = {0}, v[2 * 2] = {1, 1, 1, 1};
    int32_t ok[4] = {0, 1, 2, 0}, out_of[4] = {0, 3, 1, 2}, twice[4] = {1, 1, 0, 2};
    void *o = NULL;
    assert_int_equal(wmat__dsf_create(WMAT_F32, 4, 2, 3, 4, D, ok, v, &o), WMAT_ERR_INVALID);
    assert_int_equal(wmat__dsf_create(WMAT_F32, 4, 2, 3, 2, D, out_of, v, &o), WMAT_ERR_INVALID);
    assert_int_equal(wmat__dsf_create(WMAT_F32, 4, 2, 3, 2, D, twice, v, &o), WMAT_ERR_INVALID);
    assert_true(strstr(wmat_last_error(), "repeats") != NULL);
    assert_int_equal(wmat__dsf_create(WMAT_BF16, 4, 2, 3, 2, D, ok, v, &o), WMAT_ERR_UNSUPPORTED);
    assert_null(o);
    TU_OK(wmat__dsf_create(WMAT_F32, 4, 2, 3, 2, D, ok, v, &o));
    wmat__wkind_find("dsf")->free(o);
    hostile_indices();
}

/* ------------------------------------------------------------ post hoc */

static void posthoc_case(int64_t rows, int64_t cols, int64_t k, int64_t s)
{
    const int64_t mn = rows < cols ? rows : cols;
    float *W = malloc(sizeof(float) * rows * cols);
    /* a decaying spectrum (a random product of a low-rank and noise) */
    float *P = malloc(sizeof(float) * rows * 6), *Q = malloc(sizeof(float) * 6 * cols);
    fill(P, (size_t)rows * 6, 1, 1.0f);
    fill(Q, (size_t)cols * 6, 2, 1.0f);
    fill(W, (size_t)(rows * cols), 3, 0.3f);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t c = 0; c < cols; c++)
            for (int j = 0; j < 6; j++) W[i * cols + c] += P[i * 6 + j] * Q[j * cols + c];
    /* the literal definition from the same LAPACK SVD */
    double *A = malloc(sizeof(double) * rows * cols), *U = malloc(sizeof(double) * rows * mn),
           *VT = malloc(sizeof(double) * mn * cols), *sv = malloc(sizeof(double) * mn);
    for (int64_t i = 0; i < rows * cols; i++) A[i] = W[i];
    TU_OK(wmat__dgesdd((int)rows, (int)cols, A, (int)cols, sv, U, (int)mn, VT, (int)cols));
    double *Sref = calloc((size_t)(k * cols), sizeof(double)), *Dref = malloc(sizeof(double) * rows * k);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < k; j++) Dref[i * k + j] = U[i * mn + j] * sv[j];
    for (int64_t c = 0; c < cols; c++) {
        char taken[512] = {0};
        for (int64_t q = 0; q < s; q++) {
            int64_t best = -1;
            for (int64_t j = 0; j < k; j++)
                if (!taken[j] && (best < 0 || fabsf((float)VT[j * cols + c]) > fabsf((float)VT[best * cols + c]))) best = j;
            taken[best] = 1;
            Sref[best * cols + c] = (float)VT[best * cols + c];
        }
    }
    float *Wd = malloc(sizeof(float) * rows * cols);
    double err[2];
    for (int refit = 0; refit <= 1; refit++) {
        wmat_tensor T;
        memset(&T, 0, sizeof T);
        TU_OK(wmat__dsformer_factor(W, rows, cols, k, s, refit, WMAT_F32, &T, &err[refit]));
        assert_string_equal(wmat__wkind_of(&T)->name, "dsf");
        /* S: the mask and values of the definition */
        int32_t ci[512];
        float cv[512];
        for (int64_t c = 0; c < cols; c++) {
            wmat__dsf_column(&T, c, ci, cv);
            int n = 0;
            for (int64_t j = 0; j < k; j++) n += Sref[j * cols + c] != 0;
            assert_int_equal(n, s);
            for (int64_t q = 0; q < s; q++) {
                if (Sref[ci[q] * cols + c] == 0) fail_msg("column %lld keeps row %d, not among the top %lld", (long long)c, ci[q], (long long)s);
                TU_ASSERT_NEAR(cv[q], Sref[ci[q] * cols + c], 1e-6);
            }
        }
        const float *Dk = wmat__dsf_d(&T)->data;
        if (!refit) {
            for (int64_t i = 0; i < rows * k; i++) TU_ASSERT_NEAR(Dk[i], Dref[i], 1e-5 * (1 + fabs(Dref[i])));
        } else {
            /* least squares: the residual is orthogonal to the rows of S */
            wmat__wkind_of(&T)->dequant_rows(&T, 0, rows, Wd);
            double gmax = 0, scale = 0;
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < k; j++) {
                    double g = 0;
                    for (int64_t c = 0; c < cols; c++) g += ((double)W[i * cols + c] - Wd[i * cols + c]) * Sref[j * cols + c];
                    gmax = fmax(gmax, fabs(g));
                }
            for (int64_t i = 0; i < rows * cols; i++) scale = fmax(scale, fabs(W[i]));
            if (!(gmax <= 1e-4 * scale)) fail_msg("refit: (W - D S) S^T reaches %g (|W| max %g)", gmax, scale);
        }
        /* the reported error is the measured one */
        wmat__wkind_of(&T)->dequant_rows(&T, 0, rows, Wd);
        double num = 0, den = 0;
        for (int64_t i = 0; i < rows * cols; i++) num += pow(W[i] - Wd[i], 2), den += (double)W[i] * W[i];
        TU_ASSERT_NEAR(err[refit], sqrt(num / den), 1e-6);
        wmat__tensor_free_data(&T);
    }
    if (!(err[1] <= err[0] + 1e-7)) fail_msg("refit made it worse: %g vs %g", err[1], err[0]);
    free(W), free(P), free(Q), free(A), free(U), free(VT), free(sv), free(Sref), free(Dref), free(Wd);
}

static void test_posthoc(void **state)
{
    (void)state;
    posthoc_case(40, 24, 10, 4);
    posthoc_case(24, 60, 12, 3);
    posthoc_case(30, 30, 8, 8); /* s = k: the truncated SVD itself */
    /* s = k without refit is exactly the truncated SVD: error from the tail */
    /* compression: the largest k whose size fits, s from nnz_share */
    const int64_t rows = 64, cols = 48;
    float *W = malloc(sizeof(float) * rows * cols);
    fill(W, (size_t)(rows * cols), 9, 1.0f);
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, wmat__dsformer_keys));
    TU_OK(wmat__pset_parse_kv(&ps, "compression=2.5,nnz_share=0.5", ',', 0));
    TU_OK(wmat__decomp_dsformer_check(&ps, 1));
    wmat_tensor T;
    memset(&T, 0, sizeof T);
    int64_t k;
    double e;
    TU_OK(wmat__decomp_dsformer(W, rows, cols, &ps, WMAT_F32, &T, &k, &e));
    const uint64_t budget = (uint64_t)(rows * cols * 4 / 2.5);
    assert_true(wmat__wkind_of(&T)->nbytes(&T) <= budget);
    assert_true(wmat__dsformer_bytes(rows, cols, k + 1, (k + 2) / 2, WMAT_F32) > budget);
    int64_t kk, ss;
    wmat__dsf_shape(&T, &kk, &ss);
    assert_int_equal(kk, k);
    assert_int_equal(ss, (k + 1) / 2);
    assert_true(e > 0 && e < 1);
    wmat__tensor_free_data(&T);
    wmat__pset_free(&ps);
    /* keys that contradict each other are refused by name */
    TU_OK(wmat__pset_init(&ps, wmat__dsformer_keys));
    TU_OK(wmat__pset_parse_kv(&ps, "rank=4,nnz=6", ',', 0));
    assert_int_equal(wmat__decomp_dsformer_check(&ps, 1), WMAT_ERR_INVALID);
    assert_true(strstr(wmat_last_error(), "nnz=6") != NULL);
    wmat__pset_free(&ps);
    TU_OK(wmat__pset_init(&ps, wmat__dsformer_keys));
    assert_int_equal(wmat__decomp_dsformer_check(&ps, 1), WMAT_ERR_INVALID); /* neither rank nor compression */
    wmat__pset_free(&ps);
    free(W);
}

/* ------------------------------------------------------------ STE */

/* top-s rows of column c of S (k, in) by repeated argmax (ties: lower row) */
static void lit_mask(const float *S, int k, int in, int s, int c, char *keep)
{
    memset(keep, 0, (size_t)k);
    for (int q = 0; q < s; q++) {
        int best = -1;
        for (int j = 0; j < k; j++)
            if (!keep[j] && (best < 0 || fabsf(S[j * in + c]) > fabsf(S[best * in + c]))) best = j;
        keep[best] = 1;
    }
}

static void ste_case(const char *name, float density, int s)
{
    enum { BT = 4, in = 7, out = 6, k = 5 };
    const wmat__adapter *a = wmat__adapter_find(name);
    assert_non_null(a);
    const wmat__adapter_cfg c = {.rank = k, .alpha = 1.0f, .density = density, .nt = 1, .isa = WMAT_ISA_AVX2};
    const int fixed_mask = a->fixed_bytes != NULL;
    int rows[4], cols[4];
    a->shapes(&c, in, out, rows, cols);
    assert_int_equal(rows[0], out), assert_int_equal(cols[0], k), assert_int_equal(rows[1], k), assert_int_equal(cols[1], in);
    TU_OK(a->check(&c, NULL, in, out, "test"));
    float D[out * k], St[k * in], X[BT * in], dY[BT * out], W[out * in];
    fill(W, out * in, 1, 1.0f);
    float *w[2] = {D, St};
    void *fixed = fixed_mask ? calloc(a->fixed_bytes(&c, in, out), 1) : NULL;
    wmat_rng r;
    wmat_rng_seed(&r, 4);
    TU_OK(a->init(&c, w, fixed, NULL, W, in, out, &r)); /* from W's SVD */
    if (fixed_mask) assert_true(a->fixed_valid(&c, fixed, in, out));
    float *act = calloc(a->act_floats(&c, BT), sizeof(float)), *scr = calloc(a->scratch_floats(&c, BT, in, out), sizeof(float));
    for (int step = 0; step < 3; step++) {
        /* new values each round: the straight-through mask must follow them */
        fill(D, out * k, 10 + step, 1.0f);
        fill(St, k * in, 20 + step, 1.0f);
        fill(X, BT * in, 30 + step, 1.0f);
        fill(dY, BT * out, 40 + step, 1.0f);
        /* the mask of the literal version: fixed at init, or top-s now */
        char keep[k * in];
        for (int col = 0; col < in; col++) {
            char kc[k];
            if (fixed_mask) {
                memset(kc, 0, k);
                for (int q = 0; q < s; q++) kc[((const int32_t *)fixed)[col * s + q]] = 1;
            } else
                lit_mask(St, k, in, s, col, kc);
            for (int j = 0; j < k; j++) keep[j * in + col] = kc[j];
        }
        double Sm[k * in], Z[BT * k], Yr[BT * out], dZ[BT * k], dD[out * k], dS[k * in], dXr[BT * in];
        int nkeep = 0;
        for (int i = 0; i < k * in; i++) Sm[i] = keep[i] ? St[i] : 0, nkeep += keep[i];
        assert_int_equal(nkeep, s * in);
        for (int t = 0; t < BT; t++)
            for (int j = 0; j < k; j++) {
                Z[t * k + j] = 0;
                for (int col = 0; col < in; col++) Z[t * k + j] += (double)X[t * in + col] * Sm[j * in + col];
            }
        for (int t = 0; t < BT; t++)
            for (int o = 0; o < out; o++) {
                Yr[t * out + o] = 0.5; /* the base's share on entry */
                for (int j = 0; j < k; j++) Yr[t * out + o] += Z[t * k + j] * D[o * k + j];
            }
        for (int t = 0; t < BT; t++)
            for (int j = 0; j < k; j++) {
                dZ[t * k + j] = 0;
                for (int o = 0; o < out; o++) dZ[t * k + j] += (double)dY[t * out + o] * D[o * k + j];
            }
        for (int o = 0; o < out; o++)
            for (int j = 0; j < k; j++) {
                dD[o * k + j] = 0;
                for (int t = 0; t < BT; t++) dD[o * k + j] += (double)dY[t * out + o] * Z[t * k + j];
            }
        for (int j = 0; j < k; j++)
            for (int col = 0; col < in; col++) {
                dS[j * in + col] = 0;
                for (int t = 0; t < BT; t++) dS[j * in + col] += dZ[t * k + j] * X[t * in + col];
                if (fixed_mask && !keep[j * in + col]) dS[j * in + col] = 0; /* exact: nothing off the mask */
            }
        for (int t = 0; t < BT; t++)
            for (int col = 0; col < in; col++) {
                dXr[t * in + col] = 1.0; /* the base's share on entry */
                for (int j = 0; j < k; j++) dXr[t * in + col] += dZ[t * k + j] * Sm[j * in + col];
            }
        float Y[BT * out], dX[BT * in], gD[out * k], gS[k * in];
        for (int i = 0; i < BT * out; i++) Y[i] = 0.5f;
        for (int i = 0; i < BT * in; i++) dX[i] = 1.0f;
        memset(gD, 0, sizeof gD), memset(gS, 0, sizeof gS);
        float *dw[2] = {gD, gS};
        a->forward(&c, Y, act, scr, X, (const float *const *)w, fixed, NULL, BT, in, out);
        a->backward(&c, dX, dw, scr, dY, X, (const float *const *)w, fixed, NULL, act, BT, in, out);
        for (int i = 0; i < BT * out; i++) TU_ASSERT_NEAR(Y[i], Yr[i], 1e-5 * (1 + fabs(Yr[i])));
        for (int i = 0; i < out * k; i++) TU_ASSERT_NEAR(gD[i], dD[i], 1e-5 * (1 + fabs(dD[i])));
        for (int i = 0; i < k * in; i++) TU_ASSERT_NEAR(gS[i], dS[i], 1e-5 * (1 + fabs(dS[i])));
        for (int i = 0; i < BT * in; i++) TU_ASSERT_NEAR(dX[i], dXr[i], 1e-5 * (1 + fabs(dXr[i])));
        /* straight through reaches entries off the mask (unless s = k) */
        if (!fixed_mask && s < k) {
            int off = 0;
            for (int i = 0; i < k * in; i++) off += !keep[i] && gS[i] != 0;
            assert_true(off > 0);
        }
        /* the export is the same function */
        wmat_tensor T;
        memset(&T, 0, sizeof T);
        TU_OK(a->to_weight(&c, (const float *const *)w, fixed, in, out, &T));
        assert_string_equal(wmat__wkind_of(&T)->name, s < k ? "dsf" : "lowrank");
        float Wd[out * in];
        wmat__wkind_of(&T)->dequant_rows(&T, 0, out, Wd);
        for (int o = 0; o < out; o++)
            for (int col = 0; col < in; col++) {
                double ref = 0;
                for (int j = 0; j < k; j++) ref += (double)D[o * k + j] * Sm[j * in + col];
                TU_ASSERT_NEAR(Wd[o * in + col], ref, 1e-5 * (1 + fabs(ref)));
            }
        wmat__tensor_free_data(&T);
    }
    free(act), free(scr), free(fixed);
}

static void test_ste(void **state)
{
    (void)state;
    ste_case("dsformer", 0.4f, 2); /* s = ceil(density k) of k = 5 */
    ste_case("dsformer-fixed", 0.4f, 2);
    ste_case("dsformer", 0.5f, 3);
    ste_case("dsformer", 1.0f, 5);  /* s = k: low rank */
    ste_case("dsformer", 0.01f, 1);
    assert_true(wmat__adapter_find("dsformer")->approx_grad == 2u);
    assert_true(wmat__adapter_find("dsformer-fixed")->approx_grad == 0u);
    /* refused: density outside (0, 1], rank past min(in, out) */
    const wmat__adapter *a = wmat__adapter_find("dsformer");
    assert_int_equal(a->check(&(wmat__adapter_cfg){.rank = 4, .alpha = 1, .density = 0.0f, .nt = 1}, NULL, 8, 8, "x"),
                     WMAT_ERR_INVALID);
    assert_true(strstr(wmat_last_error(), "density") != NULL);
    assert_int_equal(a->check(&(wmat__adapter_cfg){.rank = 4, .alpha = 1, .density = 1.5f, .nt = 1}, NULL, 8, 8, "x"),
                     WMAT_ERR_INVALID);
    assert_int_equal(a->check(&(wmat__adapter_cfg){.rank = 9, .alpha = 1, .density = 0.5f, .nt = 1}, NULL, 8, 16, "x"),
                     WMAT_ERR_INVALID);
    assert_true(strstr(wmat_last_error(), "rank 9") != NULL);
}

/* ------------------------------------------------------------ export */

static void export_case(const char *adapter, float density, int s)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_config cfg = tu_config(16, 24, 2, 4, 2, 13, 16);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &cfg));
    TU_OK(wmat_model_init_random(m, 5, 0.3f));
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.adapter = adapter;
    p.lora_rank = 6;
    p.adapter_density = density;
    p.lora_targets = (1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP) | (1u << WMAT_LIN_DOWN);
    p.batch = 2;
    p.ctx = 8;
    p.steps = 12;
    p.lr = 2e-2f;
    p.warmup = 2;
    int32_t d[400];
    for (int i = 0; i < 400; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % 13;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    double first = 0, last = 0;
    for (int i = 0; i < 12; i++) {
        wmat_train_step_info info;
        TU_OK(wmat_trainer_step(t, &info));
        if (i == 0) first = info.loss;
        last = info.loss;
    }
    if (!(last < first)) fail_msg("%s: loss did not fall (%.4f -> %.4f)", adapter, first, last);
    wmat_eval_result ev;
    TU_OK(wmat_trainer_eval(t, d, 400, 8, 0, &ev));
    wmat_model *mem;
    TU_OK(wmat_trainer_model(t, &mem));
    const int s_lt_k = s < 6;
    for (int l = 0; l < cfg.n_layers; l++) {
        assert_string_equal(wmat__wkind_of(wmat_model_linear(mem, l, WMAT_LIN_GATE))->name, s_lt_k ? "dsf" : "lowrank");
        assert_string_equal(wmat__wkind_of(wmat_model_linear(mem, l, WMAT_LIN_Q))->name, "f32");
    }
    char name[64];
    snprintf(name, sizeof name, "dsf_export_%s_%g", adapter, (double)density);
    const char *dir = tu_tmp(name);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    TU_OK(wmat_model_save(mem, dir, &sp));
    wmat_load_params lp = wmat_load_default_params();
    lp.keep_stored = 1;
    wmat_model *back;
    TU_OK(wmat_model_load(&back, dir, &lp));
    assert_string_equal(wmat__wkind_of(wmat_model_linear(back, 1, WMAT_LIN_DOWN))->name, s_lt_k ? "dsf" : "lowrank");
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, back, &rp));
    wmat_eval_result ev2;
    TU_OK(wmat_eval_tokens(rt, d, 400, 8, 0, &ev2));
    assert_int_equal(ev.tokens_scored, ev2.tokens_scored);
    if (!(fabs(ev.mean_nll - ev2.mean_nll) <= 1e-6 * (1 + fabs(ev.mean_nll))))
        fail_msg("%s: the export's mean NLL %.9f, the trainer's last evaluation %.9f", adapter, ev2.mean_nll, ev.mean_nll);
    wmat_runtime_free(rt);
    wmat_model_free(back);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

static void test_export_eval(void **state)
{
    (void)state;
    export_case("dsformer", 0.5f, 3);
    export_case("dsformer-fixed", 0.34f, 3);
    export_case("dsformer", 1.0f, 6);
}

/* The CLI: wmat train --method dsformer writes a native directory whose
 * wmat eval equals the trainer's last evaluation (val_loss_end). */
static void test_cli(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    TU_NEED_DATA(toks, "golden/tinystories_valid_head.tok512.u16");
    char out[512], cmd[2048];
    snprintf(out, sizeof out, "%s", tu_tmp("dsf_cli"));
    snprintf(cmd, sizeof cmd,
             "%s train %s %s --data %s --eval %s --max-windows 4 --method dsformer --rank 24 --density 0.5 "
             "--lora-targets gate,up,down --steps 6 --batch 2 --ctx 32 --lr 1e-3 --threads 1 --json 2>/dev/null",
             tu_cli(), model, out, toks, toks);
    int ec = -1;
    char *o1 = tu_run(cmd, &ec);
    assert_int_equal(ec, 0);
    const char *q = o1 ? strstr(o1, "\"val_loss_end\":") : NULL;
    if (!q) fail_msg("no val_loss_end in the train output: %s", o1 ? o1 : "(none)");
    const double nll_train = atof(q + strlen("\"val_loss_end\":"));
    snprintf(cmd, sizeof cmd, "%s eval %s --tokens %s --ctx 32 --max-windows 4 --threads 1 --json 2>/dev/null", tu_cli(), out, toks);
    char *o2 = tu_run(cmd, &ec);
    assert_int_equal(ec, 0);
    q = o2 ? strstr(o2, "\"mean_nll\":") : NULL;
    if (!q) fail_msg("no mean_nll in the eval output: %s", o2 ? o2 : "(none)");
    const double nll_eval = atof(q + strlen("\"mean_nll\":"));
    assert_true(nll_train > 0);
    if (!(fabs(nll_eval - nll_train) <= 2e-6)) fail_msg("wmat eval %.6f vs the trainer's last evaluation %.6f", nll_eval, nll_train);
    /* the linears it replaced are dsf weights */
    snprintf(cmd, sizeof cmd, "%s info %s 2>/dev/null", tu_cli(), out);
    char *o3 = tu_run(cmd, &ec);
    assert_int_equal(ec, 0);
    free(o1), free(o2), free(o3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind),
        cmocka_unit_test(test_posthoc),
        cmocka_unit_test(test_ste),
        cmocka_unit_test(test_export_eval),
        cmocka_unit_test(test_cli),
    };
    return tu_run_tests("dsformer", tests, NULL, NULL);
}
