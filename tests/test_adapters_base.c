/* The base-aware adapters (DoRA, PiSSA, OLoRA, SVFit, Bone): entries of the
 * adapter registry that see the frozen base W of their layer.
 *
 * - DoRA's gradients (dX, dA, dB, dm) against central differences of a
 *   double-precision reference of the layer in which the weight norm is
 *   held fixed at its current value (the paper's detach; PEFT's too), and
 *   the forward against that reference;
 * - at init every one of them is the base: DoRA, SVFit, Bone exactly (1e-6),
 *   PiSSA/OLoRA over their residual base within 1e-5; PiSSA's s B A is W's
 *   top-r part (the residual is orthogonal to A's rows), OLoRA's B has
 *   orthonormal columns;
 * - merge into the ORIGINAL W equals the unmerged forward within 1e-5
 *   (trained-like tensors), and PiSSA/OLoRA's merge without their fixed
 *   data (a PEFT file: the init recomputed from W) equals the one with it;
 * - PEFT files: keys and shapes as PEFT writes them (DoRA:
 *   lora_magnitude_vector.weight (out,), 1-D; PiSSA: PEFT's conversion to a
 *   plain LoRA of rank 2r, [A; A0], [B, -B0]), values bit-exact (q rows
 *   through HF's rotary order), adapter_config.json fields, and the merge
 *   of the file into the original model equal to the entry's merge (DoRA
 *   bit-exact, the converted PiSSA within 1e-6); an unconverted PiSSA file
 *   (init_lora_weights "pissa") merges onto the original base as well;
 * - a checkpoint of a DoRA, PiSSA or SVFit run resumes bit for bit (the
 *   init's SVD and residual made again, the fixed data checkpointed);
 * - bad input: rank > min(in, out), a q4_0 base (for every one of them)
 *   and Bone's rank not dividing the matrix are refused by the trainer with
 *   messages that say so.
 * The registry test (test_train_registry.c) also runs each entry through
 * its finite-difference, merge and PEFT checks inside the trainer. */
#include "test_util.h"
#include "io/model_internal.h"
#include "io/safetensors.h"
#include "train/adapter.h"
#include "train/train.h"
#include "wop/wop.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BT = 6, IN = 12, OUT = 9, RK = 3 };

typedef struct {
    const wmat__adapter *a;
    wmat__adapter_cfg c;
    float X[BT * IN], W0[OUT * IN], W[OUT * IN]; /* W0: the original base; W: what the layer runs on */
    float *w[WMAT__ADAPTER_MAX_TENSORS];
    int rows[WMAT__ADAPTER_MAX_TENSORS], cols[WMAT__ADAPTER_MAX_TENSORS];
    void *fixed;
    wmat_tensor base;
    float *act, *scratch;
} layer;

static void layer_init(layer *L, const char *name, uint64_t seed)
{
    memset(L, 0, sizeof *L);
    L->a = wmat__adapter_find(name);
    assert_non_null(L->a);
    L->c = (wmat__adapter_cfg){.rank = RK, .alpha = 2.5f, .density = 0, .nt = 1, .isa = 0};
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < BT * IN; i++) L->X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < OUT * IN; i++) L->W0[i] = wmat_rng_normal(&r);
    memcpy(L->W, L->W0, sizeof L->W);
    L->a->shapes(&L->c, IN, OUT, L->rows, L->cols);
    for (int k = 0; k < L->a->n_tensors; k++) L->w[k] = calloc(wmat__adapter_nelem(L->rows[k], L->cols[k]), sizeof(float));
    L->fixed = L->a->fixed_bytes ? calloc(L->a->fixed_bytes(&L->c, IN, OUT), 1) : NULL;
    wmat__tensor_init2(&L->base, WMAT_F32, OUT, IN, L->W);
    L->act = calloc(L->a->act_floats(&L->c, BT) + 1, sizeof(float));
    L->scratch = calloc(L->a->scratch_floats(&L->c, BT, IN, OUT) + 1, sizeof(float));
    TU_OK(L->a->check(&L->c, &L->base, IN, OUT, "test"));
    TU_OK(L->a->init(&L->c, L->w, L->fixed, &L->base, L->W, IN, OUT, &r));
}

static void layer_free(layer *L)
{
    for (int k = 0; k < L->a->n_tensors; k++) free(L->w[k]);
    free(L->fixed), free(L->act), free(L->scratch);
}

/* Trained-like tensors: the init plus noise. */
static void perturb(layer *L, uint64_t seed, float amp)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int k = 0; k < L->a->n_tensors; k++)
        for (size_t i = 0; i < wmat__adapter_nelem(L->rows[k], L->cols[k]); i++) L->w[k][i] += amp * wmat_rng_normal(&r);
}

/* The layer's output: base product, then the adapter's forward. */
static void layer_forward(layer *L, float *Y)
{
    wmat__linear_forward(Y, L->X, L->W, BT, IN, OUT);
    L->a->forward(&L->c, Y, L->act, L->scratch, L->X, (const float *const *)L->w, L->fixed, &L->base, BT, IN, OUT);
}

/* ------------------------------------------------------------ DoRA gradients */

/* f = sum R * g (X W^T + s X A^T B^T), g = m / n with n given (detached). */
static double dora_ref(const double *X, const double *W, const double *A, const double *B, const double *m,
                       const double *n, const double *R, double s)
{
    double f = 0;
    for (int t = 0; t < BT; t++) {
        double xa[RK];
        for (int j = 0; j < RK; j++) {
            xa[j] = 0;
            for (int i = 0; i < IN; i++) xa[j] += X[t * IN + i] * A[j * IN + i];
        }
        for (int o = 0; o < OUT; o++) {
            double z = 0;
            for (int i = 0; i < IN; i++) z += X[t * IN + i] * W[o * IN + i];
            for (int j = 0; j < RK; j++) z += s * xa[j] * B[o * RK + j];
            f += R[t * OUT + o] * m[o] / n[o] * z;
        }
    }
    return f;
}

static void test_dora_gradients(void **state)
{
    (void)state;
    layer L;
    layer_init(&L, "dora", 11);
    assert_true(L.a->approx_grad == 3u); /* A, B: the detached norm */
    perturb(&L, 12, 0.4f);
    const double s = L.a->scale(&L.c);
    wmat_rng r;
    wmat_rng_seed(&r, 13);
    float R[BT * OUT], Y[BT * OUT], dX[BT * IN];
    for (int i = 0; i < BT * OUT; i++) R[i] = wmat_rng_normal(&r);
    float *dw[3];
    for (int k = 0; k < 3; k++) dw[k] = calloc(wmat__adapter_nelem(L.rows[k], L.cols[k]), sizeof(float));
    layer_forward(&L, Y);
    wmat__linear_backward(dX, NULL, R, L.X, L.W, BT, IN, OUT, 0);
    L.a->backward(&L.c, dX, dw, L.scratch, R, L.X, (const float *const *)L.w, L.fixed, &L.base, L.act, BT, IN, OUT);
    /* the reference in double, n = ||W + s B A|| per row at this point */
    double Xd[BT * IN], Wd[OUT * IN], Ad[RK * IN], Bd[OUT * RK], md[OUT], nd[OUT], Rd[BT * OUT];
    for (int i = 0; i < BT * IN; i++) Xd[i] = L.X[i];
    for (int i = 0; i < OUT * IN; i++) Wd[i] = L.W[i];
    for (int i = 0; i < RK * IN; i++) Ad[i] = L.w[0][i];
    for (int i = 0; i < OUT * RK; i++) Bd[i] = L.w[1][i];
    for (int i = 0; i < OUT; i++) md[i] = L.w[2][i];
    for (int i = 0; i < BT * OUT; i++) Rd[i] = R[i];
    for (int o = 0; o < OUT; o++) {
        double ss = 0;
        for (int i = 0; i < IN; i++) {
            double v = Wd[o * IN + i];
            for (int j = 0; j < RK; j++) v += s * Bd[o * RK + j] * Ad[j * IN + i];
            ss += v * v;
        }
        nd[o] = sqrt(ss);
    }
    double fy = 0;
    for (int i = 0; i < BT * OUT; i++) fy += (double)R[i] * Y[i];
    TU_ASSERT_NEAR(fy, dora_ref(Xd, Wd, Ad, Bd, md, nd, Rd, s), 1e-5 * (1 + fabs(fy)));
    /* central differences of the double reference: h = 1e-4, exact up to
     * ~1e-8 for this polynomial; the float analytic sums: 1e-4 relative */
    struct {
        const char *what;
        double *x;
        int n;
        const float *an;
    } v[4] = {{"dX", Xd, BT * IN, dX}, {"dA", Ad, RK * IN, dw[0]}, {"dB", Bd, OUT * RK, dw[1]}, {"dm", md, OUT, dw[2]}};
    for (int q = 0; q < 4; q++) {
        double mx = 0, err = 0;
        for (int i = 0; i < v[q].n; i++) {
            const double h = 1e-4, x0 = v[q].x[i];
            v[q].x[i] = x0 + h;
            const double fp = dora_ref(Xd, Wd, Ad, Bd, md, nd, Rd, s);
            v[q].x[i] = x0 - h;
            const double fm = dora_ref(Xd, Wd, Ad, Bd, md, nd, Rd, s);
            v[q].x[i] = x0;
            const double fd = (fp - fm) / (2 * h);
            mx = fmax(mx, fabs(fd));
            err = fmax(err, fabs(fd - v[q].an[i]));
            if (isnan(v[q].an[i])) err = NAN;
        }
        print_message("dora %s: max |analytic - fd| %.3g, max |fd| %.3g\n", v[q].what, err, mx);
        if (!(mx > 0) || !(err <= 1e-4 * mx + 1e-5)) fail_msg("dora %s: max |analytic - fd| %.3g, max |fd| %.3g", v[q].what, err, mx);
    }
    for (int k = 0; k < 3; k++) free(dw[k]);
    layer_free(&L);
}

/* ------------------------------------------------------------ init = base */

static void test_init_is_base(void **state)
{
    (void)state;
    const char *names[5] = {"dora", "svfit", "bone", "pissa", "olora"};
    for (int q = 0; q < 5; q++) {
        layer L;
        layer_init(&L, names[q], 21 + q);
        float Y[BT * OUT], Y0[BT * OUT];
        layer_forward(&L, Y);
        wmat__linear_forward(Y0, L.X, L.W0, BT, IN, OUT);
        const int rewrites = L.a->rewrites_base;
        print_message("%s at init: max |Y - X W^T| %.3g\n", names[q], tu_max_abs_diff(Y, Y0, BT * OUT, NULL));
        if (rewrites) TU_ASSERT_CLOSE(Y, Y0, BT * OUT, 1e-5, 1e-5);
        else TU_ASSERT_CLOSE(Y, Y0, BT * OUT, 1e-6, 1e-6);
        if (rewrites) {
            /* the base moved (else the residual proves nothing) */
            assert_true(tu_max_abs_diff(L.W, L.W0, OUT * IN, NULL) > 0.1);
        } else {
            assert_memory_equal(L.W, L.W0, sizeof L.W);
        }
        if (!strcmp(names[q], "pissa")) {
            /* s B A is W's top-r part: the residual is orthogonal to A's rows,
             * and s ||B A||_F^2 + ||residual||_F^2 = ||W||_F^2 */
            double worst = 0, nw = 0, nr = 0, nba = 0;
            for (int o = 0; o < OUT; o++)
                for (int j = 0; j < RK; j++) {
                    double d = 0;
                    for (int i = 0; i < IN; i++) d += (double)L.W[o * IN + i] * L.w[0][j * IN + i];
                    worst = fmax(worst, fabs(d));
                }
            const double s = L.a->scale(&L.c);
            for (int o = 0; o < OUT; o++)
                for (int i = 0; i < IN; i++) {
                    double ba = 0;
                    for (int j = 0; j < RK; j++) ba += (double)L.w[1][o * RK + j] * L.w[0][j * IN + i];
                    nba += s * s * ba * ba;
                    nw += (double)L.W0[o * IN + i] * L.W0[o * IN + i];
                    nr += (double)L.W[o * IN + i] * L.W[o * IN + i];
                }
            if (!(worst < 1e-4)) fail_msg("pissa: residual not orthogonal to A's rows (%.3g)", worst);
            TU_ASSERT_NEAR(nba + nr, nw, 1e-4 * nw);
        }
        if (!strcmp(names[q], "olora")) {
            for (int a = 0; a < RK; a++)
                for (int b = 0; b < RK; b++) {
                    double d = 0;
                    for (int o = 0; o < OUT; o++) d += (double)L.w[1][o * RK + a] * L.w[1][o * RK + b];
                    TU_ASSERT_NEAR(d, a == b ? 1.0 : 0.0, 1e-5);
                }
        }
        if (!strcmp(names[q], "dora")) {
            for (int o = 0; o < OUT; o++) {
                double ss = 0;
                for (int i = 0; i < IN; i++) ss += (double)L.W0[o * IN + i] * L.W0[o * IN + i];
                TU_ASSERT_NEAR(L.w[2][o], sqrt(ss), 1e-6 * sqrt(ss));
            }
        }
        layer_free(&L);
    }
}

/* ------------------------------------------------------------ merge */

static void test_merge_equals_forward(void **state)
{
    (void)state;
    const char *names[5] = {"dora", "svfit", "bone", "pissa", "olora"};
    for (int q = 0; q < 5; q++) {
        layer L;
        layer_init(&L, names[q], 31 + q);
        perturb(&L, 40 + q, 0.3f);
        float Y[BT * OUT], Ym[BT * OUT], Wm[OUT * IN];
        layer_forward(&L, Y);
        memcpy(Wm, L.W0, sizeof Wm); /* merge goes into the ORIGINAL base */
        TU_OK(L.a->merge(&L.c, Wm, (const float *const *)L.w, L.fixed, IN, OUT));
        wmat__linear_forward(Ym, L.X, Wm, BT, IN, OUT);
        print_message("%s: merged vs unmerged max diff %.3g\n", names[q], tu_max_abs_diff(Ym, Y, BT * OUT, NULL));
        TU_ASSERT_CLOSE(Ym, Y, BT * OUT, 1e-5, 1e-5);
        assert_true(tu_max_abs_diff(Wm, L.W0, OUT * IN, NULL) > 1e-2); /* it moved */
        if (L.a->rewrites_base) {
            /* a PEFT file has no fixed data: the init is recomputed from W */
            float W2[OUT * IN];
            memcpy(W2, L.W0, sizeof W2);
            TU_OK(L.a->merge(&L.c, W2, (const float *const *)L.w, NULL, IN, OUT));
            TU_ASSERT_CLOSE(W2, Wm, OUT * IN, 1e-5, 1e-5);
        }
        layer_free(&L);
    }
}

/* ------------------------------------------------------------ PEFT files */

static wmat_model *tiny_model(uint64_t seed)
{
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

#define NT WMAT__ADAPTER_MAX_TENSORS
#define NL 2

static const char *const hf_mod[WMAT_LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                   "mlp.down_proj"};

/* Adapter tensors for q and v of both layers of m, from the init over
 * m's weights, then perturbed; the merged reference model (entry's merge
 * into a copy of m). */
typedef struct {
    const wmat__adapter *a;
    wmat__adapter_cfg c;
    float *tensors[NL * WMAT_LIN_COUNT * NT];
    void *fixed[NL * WMAT_LIN_COUNT];
} peft_set;

static void peft_set_make(peft_set *P, const char *name, wmat_model *m)
{
    memset(P, 0, sizeof *P);
    P->a = wmat__adapter_find(name);
    P->c = (wmat__adapter_cfg){.rank = 4, .alpha = 6.0f, .density = 0, .nt = 1, .isa = 0};
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            if (k != WMAT_LIN_Q && k != WMAT_LIN_V) continue;
            wmat_tensor *W = wmat_model_linear(m, l, (wmat_linear_kind)k);
            const int out = (int)W->shape[0], in = (int)W->shape[1];
            int rows[NT], cols[NT];
            P->a->shapes(&P->c, in, out, rows, cols);
            float **w = P->tensors + (l * WMAT_LIN_COUNT + k) * NT;
            for (int i = 0; i < P->a->n_tensors; i++) w[i] = calloc(wmat__adapter_nelem(rows[i], cols[i]), sizeof(float));
            void **fx = &P->fixed[l * WMAT_LIN_COUNT + k];
            *fx = P->a->fixed_bytes ? calloc(P->a->fixed_bytes(&P->c, in, out), 1) : NULL;
            float *Wc = malloc(W->nbytes); /* the trainer's private copy for a rewriting entry */
            memcpy(Wc, W->data, W->nbytes);
            TU_OK(P->a->init(&P->c, w, *fx, W, Wc, in, out, &r));
            free(Wc);
            for (int i = 0; i < P->a->n_tensors; i++)
                for (size_t j = 0; j < wmat__adapter_nelem(rows[i], cols[i]); j++) w[i][j] += 0.2f * wmat_rng_normal(&r);
        }
}

static void peft_set_free(peft_set *P)
{
    for (size_t i = 0; i < sizeof P->tensors / sizeof P->tensors[0]; i++) free(P->tensors[i]);
    for (size_t i = 0; i < sizeof P->fixed / sizeof P->fixed[0]; i++) free(P->fixed[i]);
}

static void merge_ref(peft_set *P, wmat_model *m)
{
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            float **w = P->tensors + (l * WMAT_LIN_COUNT + k) * NT;
            if (!w[0]) continue;
            wmat_tensor *W = wmat_model_linear(m, l, (wmat_linear_kind)k);
            TU_OK(P->a->merge(&P->c, W->data, (const float *const *)w, P->fixed[l * WMAT_LIN_COUNT + k],
                              (int)W->shape[1], (int)W->shape[0]));
        }
}

static cJSON *read_config(const char *dir)
{
    char path[512], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    TU_OK(wmat_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(j);
    return j;
}

/* The file's tensor (key, ndim, shape checked) equals want (q rows in HF's
 * order in the file) bit for bit. */
static void expect_tensor(const wmat_st_file *f, const wmat_config *mc, int l, int k, const char *key, int rows,
                          int cols, const float *want)
{
    char nm[256];
    snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.weight", l, hf_mod[k], key);
    const wmat_st_tensor *t = wmat__st_find(f, nm);
    if (!t) fail_msg("PEFT file lacks %s", nm);
    assert_int_equal(t->dtype, WMAT_ST_F32);
    assert_int_equal(t->ndim, cols ? 2 : 1);
    assert_int_equal(t->shape[0], rows);
    if (cols) assert_int_equal(t->shape[1], cols);
    const size_t n = wmat__adapter_nelem(rows, cols);
    assert_int_equal(t->nbytes, n * sizeof(float));
    float *got = malloc(n * sizeof(float)), *un = malloc(n * sizeof(float));
    memcpy(got, t->data, n * sizeof(float));
    const int out_rows = !strcmp(key, "lora_B") || !strcmp(key, "lora_magnitude_vector");
    if (out_rows && k == WMAT_LIN_Q) {
        wmat__rope_unpermute_hf(un, got, mc->n_heads, mc->head_dim, cols ? cols : 1);
        memcpy(got, un, n * sizeof(float));
    }
    if (memcmp(got, want, n * sizeof(float))) fail_msg("%s: values differ from the trained tensor", nm);
    free(got), free(un);
}

static void compare_models(wmat_model *a, wmat_model *b, float tol, const char *what)
{
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        const wmat_tensor *x = wmat_model_tensor(a, i), *y = wmat_model_find(b, x->name);
        for (int64_t j = 0; j < wmat_tensor_nelem(x); j++) {
            const float u = ((float *)x->data)[j], v = ((float *)y->data)[j];
            if (!(fabsf(u - v) <= tol)) fail_msg("%s: %s[%lld] %.9g vs %.9g", what, x->name, (long long)j, u, v);
        }
    }
}

static void test_peft_dora(void **state)
{
    (void)state;
    wmat_model *m = tiny_model(71);
    const wmat_config *mc = wmat_model_config(m);
    peft_set P;
    peft_set_make(&P, "dora", m);
    const char *dir = tu_tmp("peft_dora_keys");
    TU_OK(wmat__adapter_peft_save(P.a, &P.c, NULL, mc, P.tensors, P.fixed, "base", dir));
    cJSON *j = read_config(dir);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora")));
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
    TU_ASSERT_NEAR(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble, 6.0, 0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "target_modules")), 2);
    cJSON_Delete(j);
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, path));
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            float **w = P.tensors + (l * WMAT_LIN_COUNT + k) * NT;
            if (!w[0]) continue;
            int out, in;
            out = (int)wmat_model_linear(m, l, (wmat_linear_kind)k)->shape[0];
            in = (int)wmat_model_linear(m, l, (wmat_linear_kind)k)->shape[1];
            expect_tensor(f, mc, l, k, "lora_A", 4, in, w[0]);
            expect_tensor(f, mc, l, k, "lora_B", out, 4, w[1]);
            expect_tensor(f, mc, l, k, "lora_magnitude_vector", out, 0, w[2]);
        }
    wmat__st_close(f);
    /* merged from the file = the entry's merge, bit for bit */
    wmat_model *ref = tiny_model(71), *got = tiny_model(71);
    merge_ref(&P, ref);
    TU_OK(wmat_lora_merge_peft(got, dir));
    compare_models(got, ref, 0.0f, "dora PEFT merge");
    wmat_model_free(ref), wmat_model_free(got), wmat_model_free(m);
    peft_set_free(&P);
}

static void test_peft_pissa(void **state)
{
    (void)state;
    const char *names[2] = {"pissa", "olora"};
    for (int q = 0; q < 2; q++) {
        wmat_model *m = tiny_model(81);
        const wmat_config *mc = wmat_model_config(m);
        peft_set P;
        peft_set_make(&P, names[q], m);
        char dn[64];
        snprintf(dn, sizeof dn, "peft_%s_conv", names[q]);
        const char *dir = tu_tmp(dn);
        TU_OK(wmat__adapter_peft_save(P.a, &P.c, NULL, mc, P.tensors, P.fixed, "base", dir));
        /* PEFT's conversion: a plain LoRA of rank 2r, alpha 2 alpha */
        cJSON *j = read_config(dir);
        assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
        assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 8);
        TU_ASSERT_NEAR(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble, 12.0, 0);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "init_lora_weights")));
        assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora")));
        cJSON_Delete(j);
        char path[512];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        wmat_st_file *f;
        TU_OK(wmat__st_open(&f, path));
        for (int l = 0; l < NL; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                float **w = P.tensors + (l * WMAT_LIN_COUNT + k) * NT;
                if (!w[0]) continue;
                const int out = (int)wmat_model_linear(m, l, (wmat_linear_kind)k)->shape[0];
                const int in = (int)wmat_model_linear(m, l, (wmat_linear_kind)k)->shape[1];
                const float *A0 = P.fixed[l * WMAT_LIN_COUNT + k], *B0 = A0 + 4 * in;
                float *A2 = malloc(sizeof(float) * 8 * in), *B2 = malloc(sizeof(float) * out * 8);
                memcpy(A2, w[0], sizeof(float) * 4 * in);
                memcpy(A2 + 4 * in, A0, sizeof(float) * 4 * in);
                for (int o = 0; o < out; o++)
                    for (int c = 0; c < 4; c++) B2[o * 8 + c] = w[1][o * 4 + c], B2[o * 8 + 4 + c] = -B0[o * 4 + c];
                expect_tensor(f, mc, l, k, "lora_A", 8, in, A2);
                expect_tensor(f, mc, l, k, "lora_B", out, 8, B2);
                free(A2), free(B2);
            }
        wmat__st_close(f);
        /* applied to the ORIGINAL base it gives the trained layer */
        wmat_model *ref = tiny_model(81), *got = tiny_model(81), *got2 = tiny_model(81);
        merge_ref(&P, ref);
        TU_OK(wmat_lora_merge_peft(got, dir));
        compare_models(got, ref, 1e-6f, "converted PEFT merge");
        /* an unconverted file (PEFT's save without the conversion): its A, B
         * apply to the residual, which the merge recomputes from W */
        wmat__adapter raw = *P.a;
        raw.peft_as = NULL;
        snprintf(dn, sizeof dn, "peft_%s_raw", names[q]);
        dir = tu_tmp(dn);
        TU_OK(wmat__adapter_peft_save(&raw, &P.c, NULL, mc, P.tensors, NULL, "base", dir));
        j = read_config(dir);
        assert_string_equal(cJSON_GetObjectItem(j, "init_lora_weights")->valuestring, names[q]);
        assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
        cJSON_Delete(j);
        TU_OK(wmat_lora_merge_peft(got2, dir));
        compare_models(got2, ref, 1e-5f, "unconverted PEFT merge");
        wmat_model_free(ref), wmat_model_free(got), wmat_model_free(got2), wmat_model_free(m);
        peft_set_free(&P);
    }
}

/* ------------------------------------------------------------ resume */

/* A checkpoint of a base-aware run resumes bit for bit: the residual base
 * and fixed data made again by init (PiSSA's SVD) are the same, the
 * checkpoint's fixed data matches them, and both runs reach the same
 * parameters. */
static void test_resume(void **state)
{
    (void)state;
    const char *names[3] = {"dora", "pissa", "svfit"};
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t d[600];
    for (int i = 0; i < 600; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % 13;
    for (int q = 0; q < 3; q++) {
        wmat_model *m = tiny_model(91);
        wmat_train_params p = wmat_train_default_params();
        p.exec = &oc;
        p.batch = 2;
        p.ctx = 8;
        p.steps = 10;
        p.lr = 1e-2f;
        p.lora_rank = 4;
        p.lora_targets = 0x7f;
        p.adapter = names[q];
        wmat_trainer *a, *b;
        TU_OK(wmat_trainer_create(&a, m, &p));
        TU_OK(wmat_trainer_set_data(a, d, 600));
        wmat_train_step_info si;
        for (int i = 0; i < 4; i++) TU_OK(wmat_trainer_step(a, &si));
        const char *ck = tu_tmp("base_aware.ckpt");
        TU_OK(wmat_trainer_save_checkpoint(a, ck));
        TU_OK(wmat_trainer_create(&b, m, &p));
        TU_OK(wmat_trainer_set_data(b, d, 600));
        TU_OK(wmat_trainer_load_checkpoint(b, ck));
        for (int i = 0; i < 4; i++) {
            TU_OK(wmat_trainer_step(a, &si));
            TU_OK(wmat_trainer_step(b, &si));
        }
        size_t na, nb;
        float *pa = wmat__trainer_params(a, &na), *pb = wmat__trainer_params(b, &nb);
        assert_int_equal(na, nb);
        if (memcmp(pa, pb, na * sizeof(float))) fail_msg("%s: resumed parameters differ", names[q]);
        wmat_trainer_free(a), wmat_trainer_free(b), wmat_model_free(m);
    }
}

/* ------------------------------------------------------------ bad input */

static void test_bad_inputs(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.batch = 1;
    p.ctx = 8;
    p.steps = 2;
    p.lora_targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_V);
    const char *names[5] = {"dora", "pissa", "olora", "svfit", "bone"};
    {
        wmat_model *m = tiny_model(3);
        for (int q = 0; q < 5; q++) {
            wmat_trainer *t = NULL;
            p.adapter = names[q];
            /* v_proj is 8 x 16 (Bone: 16, which tiles q, so v's check speaks) */
            p.lora_rank = strcmp(names[q], "bone") ? 9 : 16;
            assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
            assert_null(t);
            print_message("%s rank %d: %s\n", names[q], p.lora_rank, wmat_last_error());
            char want[64];
            snprintf(want, sizeof want, "rank %d is larger than", p.lora_rank);
            assert_non_null(strstr(wmat_last_error(), want));
            assert_non_null(strstr(wmat_last_error(), "8 x 16"));
            p.lora_rank = 4;
            TU_OK(wmat_trainer_create(&t, m, &p));
            wmat_trainer_free(t);
        }
        /* Bone's r x r blocks must tile the matrix */
        wmat_trainer *t = NULL;
        p.adapter = "bone";
        p.lora_rank = 3;
        assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
        assert_non_null(strstr(wmat_last_error(), "does not divide"));
        wmat_model_free(m);
    }
    /* a q4_0 base (32-wide rows): refused, naming the kind; LoRA takes it */
    wmat_config c = tu_config(32, 64, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 4, 0.3f));
    const wmat_wkind *q4 = wmat__wkind_find("q4_0");
    assert_non_null(q4);
    for (int l = 0; l < c.n_layers; l++) {
        wmat_tensor *t = wmat_model_linear(m, l, WMAT_LIN_V), nt;
        memset(&nt, 0, sizeof nt);
        TU_OK(q4->from_f32((const float *)t->data, t->shape[0], t->shape[1], &nt));
        char name[WMAT_NAME_MAX];
        memcpy(name, t->name, sizeof name);
        wmat__tensor_free_data(t);
        *t = nt;
        memcpy(t->name, name, sizeof name);
    }
    p.lora_rank = 4;
    for (int q = 0; q < 5; q++) {
        wmat_trainer *t = NULL;
        p.adapter = names[q];
        assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_UNSUPPORTED);
        print_message("%s on q4_0: %s\n", names[q], wmat_last_error());
        assert_non_null(strstr(wmat_last_error(), "q4_0"));
        assert_non_null(strstr(wmat_last_error(), "not f32"));
    }
    wmat_trainer *t = NULL;
    p.adapter = "lora";
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_trainer_free(t);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dora_gradients),    cmocka_unit_test(test_init_is_base),
        cmocka_unit_test(test_merge_equals_forward), cmocka_unit_test(test_peft_dora),
        cmocka_unit_test(test_peft_pissa),        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_bad_inputs),
    };
    return tu_run_tests("adapters_base", tests, NULL, NULL);
}
