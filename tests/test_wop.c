/* Conformance suite of the weight kinds (src/wop): every kind in the
 * registry is held to the same properties, so a new kind is tested by
 * adding its registry line.
 *   - batched forward against dequantize-then-multiply in double;
 *   - the one-row path (prepare + rows split over threads) against the same
 *     reference within the kind's stated budget, and against the batched path;
 *   - backward against the definition dX = dY W and finite differences of
 *     the forward;
 *   - dequantize by row blocks equal to the whole;
 *   - save/load of object kinds through their parts: bit-identical weights,
 *     and hostile descriptions or parts rejected with a message.
 * Every comparison fails on a NaN. */
#include "test_util.h"

#include "wop/wop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * wmat_rng_normal(&r);
}

/* ||a - b|| / ||b|| in double; +inf if anything is not finite. */
static double rel_err(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double rel_err_f(const float *a, const float *b, size_t n)
{
    double *bd = malloc(n * sizeof *bd);
    for (size_t i = 0; i < n; i++) bd[i] = b[i];
    double e = rel_err(a, bd, n);
    free(bd);
    return e;
}

typedef struct {
    int64_t rows, cols;
    int T;
} shape;

/* Shapes every kind must run: block-multiple widths (ggml blocks and packed
 * codes need 32), rows not a multiple of the 16-row split, one row. */
static const shape g_shapes[] = {{48, 64, 5}, {37, 96, 3}, {130, 256, 17}, {1, 32, 2}, {64, 32, 1}, {20, 512, 3}, {3, 256, 2}};

/* A plain kind with blocks of 256 (ggml's K-quants) runs only widths that are multiples of it. */
static int kind_takes(const wmat_wkind *k, const shape *sh)
{
    const wmat_dtype_traits *tr = k->dtype == WMAT_OBJ ? NULL : wmat_dtype_info(k->dtype);
    return !tr || sh->cols % tr->block_size == 0;
}

static void check_kind_shape(const wmat_wkind *k, const shape *sh, int n_threads)
{
    const int64_t R = sh->rows, C = sh->cols;
    const int T = sh->T;
    float *W0 = malloc((size_t)(R * C) * sizeof(float));
    fill(W0, (size_t)(R * C), 11 + (uint64_t)R, 0.05f);
    wmat_tensor W;
    TU_OK(k->from_f32(W0, R, C, &W));
    snprintf(W.name, sizeof W.name, "test.%s", k->name);
    assert_ptr_equal(wmat__wkind_of(&W), k);

    /* dequantize: whole, and by blocks of rows, identical */
    float *D = malloc((size_t)(R * C) * sizeof(float)), *D2 = malloc((size_t)(R * C) * sizeof(float));
    k->dequant_rows(&W, 0, R, D);
    for (int64_t r0 = 0; r0 < R; r0 += 7) {
        const int64_t nr = R - r0 < 7 ? R - r0 : 7;
        k->dequant_rows(&W, r0, nr, D2 + r0 * C);
    }
    assert_memory_equal(D, D2, (size_t)(R * C) * sizeof(float));
    /* a default instance approximates W: 4-bit grids within 20% (Frobenius),
     * pruning kinds within what dropping their share of the weights costs */
    const double approx = rel_err_f(D, W0, (size_t)(R * C)), tol = k->approx_tol > 0 ? k->approx_tol : 0.2;
    if (!(approx < tol)) fail_msg("%s: from_f32 is %g away from W (budget %g)", k->name, approx, tol);
    const double bpw = 8.0 * (double)k->nbytes(&W) / ((double)R * (double)C);
    if (!(bpw > 0 && bpw <= 64)) fail_msg("%s: %g bits per weight", k->name, bpw);

    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.n_threads = n_threads;
    float *X = malloc((size_t)T * (size_t)C * sizeof(float)), *Y = malloc((size_t)T * (size_t)R * sizeof(float));
    double *Yref = malloc((size_t)T * (size_t)R * sizeof(double));
    fill(X, (size_t)T * (size_t)C, 5, 1.0f);
    for (int t = 0; t < T; t++)
        for (int64_t r = 0; r < R; r++) {
            double s = 0;
            for (int64_t c = 0; c < C; c++) s += (double)X[t * C + c] * D[r * C + c];
            Yref[t * R + r] = s;
        }

    /* batched forward, then accumulate on top */
    const size_t wsb = k->ws_bytes(&W, T, &ex);
    void *ws = wsb ? malloc(wsb) : NULL;
    const double btol = wmat__wkind_batch_tol(k, &ex);
    if (!(btol > 0 && btol < 0.05)) fail_msg("%s: batched budget %g", k->name, btol);
    k->forward(&W, X, Y, T, 0, ws, &ex);
    double e = rel_err(Y, Yref, (size_t)T * (size_t)R);
    if (!(e < btol)) fail_msg("%s (%lld x %lld, T %d, %d threads): forward %g from the reference (budget %g)", k->name,
                              (long long)R, (long long)C, T, n_threads, e, btol);
    k->forward(&W, X, Y, T, 1, ws, &ex);
    for (size_t i = 0; i < (size_t)T * (size_t)R; i++) Yref[i] *= 2;
    e = rel_err(Y, Yref, (size_t)T * (size_t)R);
    if (!(e < btol)) fail_msg("%s: accumulating forward %g from the reference", k->name, e);
    for (size_t i = 0; i < (size_t)T * (size_t)R; i++) Yref[i] /= 2;

    /* one-row path: each token alone, rows split over threads as the runtime does */
    float *y = malloc((size_t)R * sizeof(float));
    const size_t pb = k->prep_bytes(&W, &ex);
    void *prep = pb ? malloc(pb) : NULL;
    for (int t = 0; t < T; t++) {
        if (pb) k->prepare(&W, X + t * C, prep, &ex);
        for (int th = 0; th < n_threads; th++) {
            int64_t r0, r1;
            wmat__wop_split(k, R, th, n_threads, &r0, &r1);
            if (r0 < r1) k->rows(&W, X + t * C, prep, y, r0, r1, 0, &ex);
        }
        e = rel_err(y, Yref + t * R, (size_t)R);
        if (!(e <= k->row_tol)) fail_msg("%s: one-row product %g from the reference (budget %g)", k->name, e, k->row_tol);
        /* the helper (threads, its own buffers) gives the same bits */
        float *y2 = malloc((size_t)R * sizeof(float));
        TU_OK(wmat__wop_matvec(&W, X + t * C, y2, 0, &ex));
        assert_memory_equal(y, y2, (size_t)R * sizeof(float));
        free(y2);
    }

    /* backward: dX = dY W, against the definition and finite differences */
    float *dY = malloc((size_t)T * (size_t)R * sizeof(float)), *dX = malloc((size_t)T * (size_t)C * sizeof(float));
    double *dXref = malloc((size_t)T * (size_t)C * sizeof(double));
    fill(dY, (size_t)T * (size_t)R, 9, 1.0f);
    for (int t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++) s += (double)dY[t * R + r] * D[r * C + c];
            dXref[t * C + c] = s;
        }
    k->backward(&W, dY, dX, T, 0, ws, &ex);
    e = rel_err(dX, dXref, (size_t)T * (size_t)C);
    if (!(e < 1e-5)) fail_msg("%s: backward %g from dY W", k->name, e);
    /* f(X) = <dY, forward(X)>: df/dX[t][c] by central differences */
    /* through the kind's exact path: where the CPU has them, int8 (VNNI)
     * or bf16 (native bf16 GEMM) activations round X, and rounding x0 +- h
     * is not what the backward differentiates */
    wmat_wexec exfd = ex;
    exfd.act8 = 0;
    exfd.gemm = WMAT_GEMM_OPENBLAS;
    if (!(wmat__wkind_batch_tol(k, &exfd) <= 1e-4))
        fail_msg("%s: no exact batched path (budget %g without int8 or bf16 activations)", k->name,
                 (double)wmat__wkind_batch_tol(k, &exfd));
    const size_t wsfd = k->ws_bytes(&W, T, &exfd);
    if (wsfd > wsb) ws = realloc(ws, wsfd);
    for (int probe = 0; probe < 3; probe++) {
        const int t = probe % T;
        const int64_t c = (probe * 37) % C;
        const float h = 1e-2f, x0 = X[t * C + c];
        double f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            X[t * C + c] = x0 + (sgn ? h : -h);
            k->forward(&W, X, Y, T, 0, ws, &exfd);
            double s = 0;
            for (size_t i = 0; i < (size_t)T * (size_t)R; i++) s += (double)dY[i] * Y[i];
            f[sgn] = s;
        }
        X[t * C + c] = x0;
        const double fd = (f[1] - f[0]) / (2.0 * h), an = dX[t * C + c];
        double scale = 0;
        for (int64_t r = 0; r < R; r++) scale += fabs((double)dY[t * R + r] * D[r * C + c]);
        if (!(fabs(fd - an) <= 1e-3 * (scale + 1e-3)))
            fail_msg("%s: dX[%d][%lld] %g, finite differences %g", k->name, t, (long long)c, an, fd);
    }
    k->backward(&W, dY, dX, T, 1, ws, &ex);
    for (size_t i = 0; i < (size_t)T * (size_t)C; i++) dXref[i] *= 2;
    e = rel_err(dX, dXref, (size_t)T * (size_t)C);
    if (!(e < 1e-5)) fail_msg("%s: accumulating backward %g", k->name, e);

    wmat__tensor_free_data(&W);
    free(W0), free(D), free(D2), free(X), free(Y), free(Yref), free(ws), free(y), free(prep), free(dY), free(dX),
        free(dXref);
}

static void test_every_kind(void **state)
{
    (void)state;
    assert_true(wmat__wkind_count() >= 7);
    for (int i = 0; i < wmat__wkind_count(); i++) {
        const wmat_wkind *k = wmat__wkind_at(i);
        assert_non_null(k->name);
        assert_ptr_equal(wmat__wkind_find(k->name), k);
        /* every entry a kind must have */
        assert_non_null(k->forward);
        assert_non_null(k->backward);
        assert_non_null(k->rows);
        assert_non_null(k->prepare);
        assert_non_null(k->dequant_rows);
        assert_non_null(k->from_f32);
        assert_true(k->row_tol > 0);
        if (k->dtype == WMAT_OBJ) assert_non_null(k->free);
        for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++)
            for (int nt = 1; nt <= 3; nt += 2)
                if (kind_takes(k, &g_shapes[s])) check_kind_shape(k, &g_shapes[s], nt);
        print_message("  %-8s ok (%s)\n", k->name, k->summary);
    }
}

/* The public accessors follow the table. */
static void test_public_view(void **state)
{
    (void)state;
    const int n = wmat_weight_kind_count();
    assert_int_equal(n, wmat__wkind_count());
    for (int i = 0; i < n; i++) {
        const char *sum = NULL;
        assert_string_equal(wmat_weight_kind_name(i, &sum), wmat__wkind_at(i)->name);
        assert_non_null(sum);
    }
    assert_null(wmat_weight_kind_name(n, NULL));
    float W0[64 * 32];
    fill(W0, 64 * 32, 3, 1.0f);
    wmat_tensor W;
    TU_OK(wmat__wkind_find("q4_0")->from_f32(W0, 64, 32, &W));
    assert_string_equal(wmat_tensor_kind(&W), "q4_0");
    assert_true(fabs(wmat_tensor_bits_per_weight(&W) - 4.5) < 1e-9);
    float row[32];
    assert_int_equal(wmat_tensor_dequant_rows(&W, 60, 5, row), WMAT_ERR_INVALID);
    TU_OK(wmat_tensor_dequant_rows(&W, 63, 1, row));
    wmat__tensor_free_data(&W);
    wmat_tensor v = {.dtype = WMAT_F32, .ndim = 1, .shape = {4}, .data = row};
    assert_null(wmat_tensor_kind(&v));
}

/* ---- save/load of object kinds through their parts */

typedef struct {
    wmat_wpart parts[WMAT_WPART_MAX];
    int n;
    int corrupt; /* 1: report a wrong dtype, 2: a wrong shape, 3: a missing part */
} part_store;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    part_store *s = user;
    for (int i = 0; i < s->n; i++) {
        const wmat_wpart *p = &s->parts[i];
        if (strcmp(p->suffix, suffix)) continue;
        wmat_dtype dt = s->corrupt == 1 ? (p->dtype == WMAT_F32 ? WMAT_U8 : WMAT_F32) : p->dtype;
        int64_t s0 = s->corrupt == 2 ? p->shape[0] + 1 : p->shape[0];
        if (dt != dtype || p->ndim != ndim || s0 != d0 || (ndim == 2 && p->shape[1] != d1))
            return wmat_set_error(WMAT_ERR_FORMAT, "store: part %s has the wrong dtype or shape", suffix);
        *data = p->data;
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_FORMAT, "store: missing part %s", suffix);
}

static void test_save_load_parts(void **state)
{
    (void)state;
    int tested = 0;
    for (int i = 0; i < wmat__wkind_count(); i++) {
        const wmat_wkind *k = wmat__wkind_at(i);
        if (k->dtype != WMAT_OBJ || !k->save) continue;
        const int64_t R = 48, C = 64;
        float *W0 = malloc((size_t)(R * C) * sizeof(float));
        fill(W0, (size_t)(R * C), 21, 0.1f);
        wmat_tensor W;
        TU_OK(k->from_f32(W0, R, C, &W));
        cJSON *desc = cJSON_CreateObject();
        cJSON_AddStringToObject(desc, "kind", k->name);
        part_store st = {.n = 0};
        TU_OK(k->save(&W, desc, st.parts, &st.n, "test"));
        assert_true(st.n >= 1 && st.n <= WMAT_WPART_MAX);
        void *obj = NULL;
        TU_OK(k->load(desc, R, C, get_part, &st, "test", &obj));
        wmat_tensor L;
        wmat__tensor_init2(&L, WMAT_OBJ, R, C, obj);
        L.flags = WMAT_TF_OWNED;
        float *a = malloc((size_t)(R * C) * sizeof(float)), *b = malloc((size_t)(R * C) * sizeof(float));
        k->dequant_rows(&W, 0, R, a);
        k->dequant_rows(&L, 0, R, b);
        assert_memory_equal(a, b, (size_t)(R * C) * sizeof(float));
        assert_true(k->nbytes(&W) == k->nbytes(&L));
        /* hostile parts: wrong dtype, wrong shape, missing */
        for (int c = 1; c <= 3; c++) {
            part_store bad = st;
            bad.corrupt = c;
            if (c == 3) bad.n = st.n - 1;
            void *o = NULL;
            assert_true(k->load(desc, R, C, get_part, &bad, "test", &o) < 0);
            assert_null(o);
            assert_true(strlen(wmat_last_error()) > 0);
        }
        /* hostile descriptions: every field removed or replaced by garbage */
        for (cJSON *f = desc->child; f; f = f->next) {
            if (!strcmp(f->string, "kind")) continue;
            cJSON *d2 = cJSON_Duplicate(desc, 1);
            cJSON_ReplaceItemInObjectCaseSensitive(d2, f->string, cJSON_CreateString("\x01garbage"));
            void *o = NULL;
            assert_true(k->load(d2, R, C, get_part, &st, "test", &o) < 0);
            assert_null(o);
            /* without it: an error, or (an optional field) a valid object */
            cJSON_DeleteItemFromObjectCaseSensitive(d2, f->string);
            if (k->load(d2, R, C, get_part, &st, "test", &o) == WMAT_OK) k->free(o);
            o = NULL;
            cJSON_AddNumberToObject(d2, f->string, 1e300);
            assert_true(k->load(d2, R, C, get_part, &st, "test", &o) < 0);
            cJSON_ReplaceItemInObjectCaseSensitive(d2, f->string, cJSON_CreateNumber(-7));
            assert_true(k->load(d2, R, C, get_part, &st, "test", &o) < 0);
            cJSON_Delete(d2);
        }
        wmat__tensor_free_data(&L);
        wmat__tensor_free_data(&W);
        cJSON_Delete(desc);
        free(W0), free(a), free(b);
        tested++;
    }
    assert_true(tested >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_kind),
        cmocka_unit_test(test_public_view),
        cmocka_unit_test(test_save_load_parts),
    };
    return tu_run_tests("wop", tests, NULL, NULL);
}
