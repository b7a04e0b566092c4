/* EVA and MiSS, two entries of the adapter registry (src/train/adapter_eva.c,
 * adapter_miss.c).
 *
 * - MiSS: the forward (chunk sums times D) equals X dW^T with the explicit
 *   dW[o, c r + t] = D[t, o], and merge adds exactly that dW; its PEFT file
 *   has PEFT's MISS layout (<module>.miss_block, (r, out), no ".weight";
 *   peft_type MISS, r, mini_r 1, init_weights true), q/k columns in HF's
 *   rotary order, and merges back bit-exact;
 * - EVA: A's rows are the top eigenvectors of the covariance of the
 *   layer's calibration inputs, collected here independently through the
 *   runtime's hook: orthonormal, Rayleigh quotients descending and equal to
 *   the covariance's top eigenvalues (the first one also by power
 *   iteration), each row an eigenvector (residual), the largest entry
 *   positive; B = 0 at init; the ranks sum to the budget r x #matrices; the
 *   redistribution on a hand example; the PEFT file's rank_pattern /
 *   alpha_pattern (alpha r_l / r) and tensor shapes follow the ranks;
 * - both resume from a checkpoint bit for bit;
 * - bad input: MiSS's rank not dividing the input width or larger than it,
 *   EVA's rank larger than an input width, EVA without calibration tokens. */
#include "test_util.h"
#include "io/model_internal.h"
#include "io/safetensors.h"
#include "core/shapes.h"
#include "linalg/dense.h"
#include "train/adapter.h"
#include "train/train.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *tiny_model(uint64_t seed)
{
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

static int32_t *tokens(size_t n)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3) + (i / 11) % 4) % 13;
    return d;
}

static wmat_train_params params(wmat_context *oc, const char *adapter, int rank)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.adapter = adapter;
    p.batch = 4;
    p.ctx = 8;
    p.steps = 20;
    p.lr = 5e-2f;
    p.lora_rank = rank;
    p.lora_alpha = 16;
    p.lora_targets = 0x7f;
    return p;
}

static void steps(wmat_trainer *t, int n)
{
    for (int i = 0; i < n; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
    }
}

static cJSON *read_config(const char *dir)
{
    char path[4096], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    TU_OK(wmat_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(j);
    return j;
}

static const char *const hf_mod[WMAT_LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                   "mlp.down_proj"};

/* ------------------------------------------------------------ MiSS kernels */

static void test_miss_forward_is_delta(void **state)
{
    (void)state;
    enum { BT = 5, in = 12, out = 7, r = 3 };
    const wmat__adapter *a = wmat__adapter_find("miss");
    assert_non_null(a);
    wmat__adapter_cfg c = {.rank = r, .alpha = 1, .nt = 1};
    int rows[4], cols[4];
    a->shapes(&c, in, out, rows, cols);
    assert_int_equal(rows[0], r);
    assert_int_equal(cols[0], out);
    wmat_rng g;
    wmat_rng_seed(&g, 3);
    float X[BT * in], D[r * out] = {0}, Y[BT * out] = {0}, ref[BT * out], dW[out * in], W[out * in] = {0};
    for (int i = 0; i < BT * in; i++) X[i] = wmat_rng_normal(&g);
    float *w[1] = {D};
    TU_OK(a->init(&c, w, NULL, NULL, NULL, in, out, &g)); /* w comes zeroed (the contract) */
    for (int i = 0; i < r * out; i++) assert_true(D[i] == 0.0f); /* zero init: the layer is the base */
    for (int i = 0; i < r * out; i++) D[i] = wmat_rng_normal(&g);
    /* the definition: dW[o, c r + t] = D[t, o] for every chunk c */
    for (int o = 0; o < out; o++)
        for (int j = 0; j < in; j++) dW[o * in + j] = D[(j % r) * out + o];
    for (int b = 0; b < BT; b++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int j = 0; j < in; j++) s += (double)X[b * in + j] * dW[o * in + j];
            ref[b * out + o] = (float)s;
        }
    float act[BT * r], scratch[BT * r];
    assert_true(a->act_floats(&c, BT) <= BT * r && a->scratch_floats(&c, BT, in, out) <= BT * r);
    a->forward(&c, Y, act, scratch, X, (const float *const *)w, NULL, NULL, BT, in, out);
    for (int i = 0; i < BT * out; i++)
        if (fabsf(Y[i] - ref[i]) > 1e-5f * (1 + fabsf(ref[i]))) fail_msg("miss forward %d: %.7g vs %.7g", i, Y[i], ref[i]);
    TU_OK(a->merge(&c, W, (const float *const *)w, NULL, in, out));
    assert_memory_equal(W, dW, sizeof W); /* merge adds exactly dW */
}

/* ------------------------------------------------------------ MiSS PEFT file */

static void test_miss_peft(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(400);
    wmat_model *m = tiny_model(5);
    const wmat_config *mc = wmat_model_config(m);
    wmat_train_params p = params(&oc, "miss", 4);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    steps(t, 4);
    const char *dir = tu_tmp("peft_miss_names");
    TU_OK(wmat_trainer_save_lora(t, dir));
    cJSON *j = read_config(dir);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "MISS");
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
    assert_int_equal(cJSON_GetObjectItem(j, "mini_r")->valueint, 1);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "init_weights")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "target_modules")), 7);
    assert_null(cJSON_GetObjectItem(j, "lora_alpha"));
    cJSON_Delete(j);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, path));
    size_t np;
    const float *params_ = wmat__trainer_params(t, &np);
    size_t off = 0;
    for (int l = 0; l < mc->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            int o, in;
            wmat__linear_shape(mc, (wmat_linear_kind)k, &o, &in);
            char nm[256];
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.miss_block", l, hf_mod[k]);
            const wmat_st_tensor *st = wmat__st_find(f, nm);
            if (!st) fail_msg("no %s", nm);
            assert_int_equal(st->ndim, 2);
            assert_int_equal(st->shape[0], 4);
            assert_int_equal(st->shape[1], o);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.miss_block.weight", l, hf_mod[k]);
            assert_null(wmat__st_find(f, nm));
            /* the trainer's D, q/k columns through HF's rotary permutation */
            const float *D = params_ + off;
            off += (size_t)4 * o;
            float *want = malloc((size_t)4 * o * sizeof(float));
            if (k == WMAT_LIN_Q || k == WMAT_LIN_K)
                for (int r = 0; r < 4; r++)
                    wmat__rope_permute_hf(want + (size_t)r * o, D + (size_t)r * o,
                                          k == WMAT_LIN_Q ? mc->n_heads : mc->n_kv_heads, mc->head_dim, 1);
            else
                memcpy(want, D, (size_t)4 * o * sizeof(float));
            if (memcmp(want, st->data, (size_t)4 * o * sizeof(float))) fail_msg("%s differs from the trained D", nm);
            free(want);
        }
    assert_int_equal(off, np);
    wmat__st_close(f);
    /* merged back bit-exact */
    wmat_model *merged, *m2 = tiny_model(5);
    TU_OK(wmat_trainer_model(t, &merged));
    TU_OK(wmat_lora_merge_peft(m2, dir));
    double moved = 0;
    for (int i = 0; i < wmat_model_n_tensors(m2); i++) {
        const wmat_tensor *a = wmat_model_tensor(m2, i), *b = wmat_model_find(merged, a->name),
                          *o0 = wmat_model_find(m, a->name);
        if (memcmp(a->data, b->data, a->nbytes)) fail_msg("PEFT round trip of %s is not bit-exact", a->name);
        for (int64_t e = 0; e < wmat_tensor_nelem(a); e++)
            moved = fmax(moved, fabs(((float *)a->data)[e] - ((float *)o0->data)[e]));
    }
    assert_true(moved > 1e-3);
    wmat_model_free(m2);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ EVA */

typedef struct {
    int n;
    double *S, *sum;
    uint64_t N;
} coll;

static int collect_hook(void *user, int layer, wmat_linear_kind kind, const float *X, int T, int in,
                        const wmat_tensor *W)
{
    (void)W;
    coll *c = user;
    if (layer != 0 || kind != WMAT_LIN_Q) return 0;
    assert_int_equal(in, c->n);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < in; i++) {
            c->sum[i] += X[t * in + i];
            for (int j = 0; j < in; j++) c->S[i * in + j] += (double)X[t * in + i] * X[t * in + j];
        }
    c->N += (uint64_t)T;
    return 0;
}

static void test_eva_components(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(500);
    wmat_model *m = tiny_model(9);
    const wmat_config *mc = wmat_model_config(m);
    enum { R = 3, NB = 3 };
    wmat_train_params p = params(&oc, "eva", R);
    p.lora_targets = 1u << WMAT_LIN_Q; /* one matrix per layer: A of layer 0 is the first tensor */
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    p.adapter_calib_batches = NB;
    p.eva_tau = 2.0f; /* never converges: all NB batches of 4 windows are read */
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    const char *rep = wmat_trainer_adapter_report(t);
    print_message("%s", rep);
    assert_non_null(strstr(rep, "NOT converged"));
    assert_non_null(strstr(rep, "12 calibration windows"));
    const int r0 = wmat_trainer_adapter_rank(t, 0, WMAT_LIN_Q), r1 = wmat_trainer_adapter_rank(t, 1, WMAT_LIN_Q);
    assert_int_equal(r0 + r1, R * 2); /* the budget: r x #matrices */
    assert_true(r0 >= 0 && r0 <= 2 * R && r1 >= 0 && r1 <= 2 * R);
    assert_int_equal(wmat_trainer_adapter_rank(t, 0, WMAT_LIN_K), 0);
    assert_true(r0 > 0);
    /* the same windows' layer-0 q inputs, collected here */
    const int n = mc->dim;
    coll c = {n, calloc((size_t)n * n, sizeof(double)), calloc((size_t)n, sizeof(double)), 0};
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_runtime_set_hook(rt, collect_hook, &c);
    for (int w = 0; w < NB * 4; w++) TU_OK(wmat_forward(rt, d + w * 8, 8, NULL));
    wmat_runtime_free(rt);
    assert_int_equal(c.N, NB * 4 * 8);
    double *C = malloc((size_t)n * n * sizeof(double)), *ev = malloc((size_t)n * sizeof(double));
    double *C2 = malloc((size_t)n * n * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) C[i * n + j] = (c.S[i * n + j] - c.sum[i] * c.sum[j] / c.N) / (c.N - 1);
    memcpy(C2, C, (size_t)n * n * sizeof(double));
    TU_OK(wmat__dsyevd_upper(0, n, C2, n, ev)); /* ascending */
    /* the top eigenvalue once more by power iteration */
    double v[64], u[64], lam = 0;
    for (int i = 0; i < n; i++) v[i] = 1.0 + 0.01 * i;
    for (int it = 0; it < 3000; it++) {
        double nn = 0;
        for (int i = 0; i < n; i++) {
            u[i] = 0;
            for (int j = 0; j < n; j++) u[i] += C[i * n + j] * v[j];
            nn += u[i] * u[i];
        }
        lam = sqrt(nn);
        for (int i = 0; i < n; i++) v[i] = u[i] / lam;
    }
    assert_true(fabs(lam - ev[n - 1]) <= 1e-6 * ev[n - 1]);
    size_t np;
    const float *A = wmat__trainer_params(t, &np), *B = A + (size_t)r0 * n;
    for (int i = 0; i < n * r0; i++) assert_true(B[i] == 0.0f);
    double prev = INFINITY;
    for (int a = 0; a < r0; a++) {
        const float *x = A + (size_t)a * n;
        /* orthonormal */
        for (int b = 0; b <= a; b++) {
            double dot = 0;
            for (int i = 0; i < n; i++) dot += (double)x[i] * A[(size_t)b * n + i];
            if (fabs(dot - (a == b)) > 1e-5) fail_msg("A rows %d, %d: dot %.3g", a, b, dot);
        }
        /* an eigenvector of C, the a-th largest, in order */
        double Cx[64], q = 0, res = 0;
        for (int i = 0; i < n; i++) {
            Cx[i] = 0;
            for (int j = 0; j < n; j++) Cx[i] += C[i * n + j] * x[j];
            q += x[i] * Cx[i];
        }
        for (int i = 0; i < n; i++) res += (Cx[i] - q * x[i]) * (Cx[i] - q * x[i]);
        if (sqrt(res) > 1e-4 * ev[n - 1]) fail_msg("A row %d: |C a - q a| = %.3g (q %.6g)", a, sqrt(res), q);
        if (fabs(q - ev[n - 1 - a]) > 1e-4 * ev[n - 1]) fail_msg("A row %d: %.7g, eigenvalue %.7g", a, q, ev[n - 1 - a]);
        assert_true(q <= prev);
        prev = q;
        int big = 0;
        for (int i = 1; i < n; i++)
            if (fabsf(x[i]) > fabsf(x[big])) big = i;
        assert_true(x[big] > 0);
    }
    free(C), free(C2), free(ev), free(c.S), free(c.sum);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_eva_distribution(void **state)
{
    (void)state;
    /* two inputs of K = 3 components; q and k read input 0, o input 1;
     * budget 2 x 3 = 6: pooled 0.6 (o), 0.5 (q), 0.5 (k), 0.35 (o), 0.3 (o),
     * 0.1 (q: the tie with k goes to the lower matrix) */
    const double r0[3] = {0.5, 0.1, 0.05}, r1[3] = {0.6, 0.35, 0.3};
    const double *ratio[2] = {r0, r1};
    const int mat_g[3] = {0, 0, 1};
    int rank[3];
    TU_OK(wmat__eva_distribute(ratio, mat_g, 3, 3, 6, rank));
    assert_int_equal(rank[0], 2);
    assert_int_equal(rank[1], 1);
    assert_int_equal(rank[2], 3);
    /* a budget of all components gives every matrix K; none gives 0 */
    TU_OK(wmat__eva_distribute(ratio, mat_g, 3, 3, 9, rank));
    assert_true(rank[0] == 3 && rank[1] == 3 && rank[2] == 3);
    TU_OK(wmat__eva_distribute(ratio, mat_g, 3, 3, 0, rank));
    assert_true(rank[0] == 0 && rank[1] == 0 && rank[2] == 0);
}

static void test_eva_peft(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(500);
    wmat_model *m = tiny_model(13);
    const wmat_config *mc = wmat_model_config(m);
    wmat_train_params p = params(&oc, "eva", 4);
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    print_message("%s", wmat_trainer_adapter_report(t));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    steps(t, 4);
    int sum = 0, differ = 0;
    for (int l = 0; l < mc->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const int rl = wmat_trainer_adapter_rank(t, l, k);
            assert_true(rl >= 0 && rl <= 8);
            sum += rl;
            differ += rl != 4;
        }
    assert_int_equal(sum, 4 * 2 * WMAT_LIN_COUNT);
    const char *dir = tu_tmp("peft_eva_pattern");
    TU_OK(wmat_trainer_save_lora(t, dir));
    cJSON *j = read_config(dir);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_string_equal(cJSON_GetObjectItem(j, "init_lora_weights")->valuestring, "eva");
    assert_non_null(cJSON_GetObjectItem(j, "eva_config"));
    const cJSON *rp = cJSON_GetObjectItem(j, "rank_pattern"), *ap = cJSON_GetObjectItem(j, "alpha_pattern");
    if (differ) assert_true(rp && ap);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, path));
    for (int l = 0; l < mc->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const int rl = wmat_trainer_adapter_rank(t, l, k);
            char key[128], nm[256];
            snprintf(key, sizeof key, "model.layers.%d.%s", l, hf_mod[k]);
            const cJSON *re = rp ? cJSON_GetObjectItem(rp, key) : NULL, *ae = ap ? cJSON_GetObjectItem(ap, key) : NULL;
            if (rl != 4 && rl > 0) {
                assert_true(re && re->valueint == rl);
                assert_true(ae && fabs(ae->valuedouble - 16.0 * rl / 4) < 1e-5);
            } else if (rl == 4) {
                assert_null(re);
                assert_null(ae);
            }
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_A.weight", l, hf_mod[k]);
            const wmat_st_tensor *st = wmat__st_find(f, nm);
            if (!rl) {
                assert_null(st); /* rank 0: not adapted */
                continue;
            }
            int o, in;
            wmat__linear_shape(mc, (wmat_linear_kind)k, &o, &in);
            assert_non_null(st);
            assert_true(st->shape[0] == rl && st->shape[1] == in);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_B.weight", l, hf_mod[k]);
            st = wmat__st_find(f, nm);
            assert_true(st && st->shape[0] == o && st->shape[1] == rl);
        }
    wmat__st_close(f);
    cJSON_Delete(j);
    /* the file merges (LoRA's reader, per-layer ranks and alphas) to the trained model */
    wmat_model *merged, *m2 = tiny_model(13);
    TU_OK(wmat_trainer_model(t, &merged));
    TU_OK(wmat_lora_merge_peft(m2, dir));
    for (int i = 0; i < wmat_model_n_tensors(m2); i++) {
        const wmat_tensor *a = wmat_model_tensor(m2, i), *b = wmat_model_find(merged, a->name);
        for (int64_t e = 0; e < wmat_tensor_nelem(a); e++)
            if (!(fabsf(((float *)a->data)[e] - ((float *)b->data)[e]) < 1e-6f))
                fail_msg("EVA PEFT round trip differs in %s[%lld]", a->name, (long long)e);
    }
    wmat_model_free(m2);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ resume, bad input */

static void resume_check(const char *name)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(500);
    wmat_model *m = tiny_model(17);
    wmat_train_params p = params(&oc, name, 4);
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    wmat_trainer *a, *b;
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 500));
    steps(a, 3);
    char nm[64];
    snprintf(nm, sizeof nm, "%s.ckpt", name);
    const char *ck = tu_tmp(nm);
    TU_OK(wmat_trainer_save_checkpoint(a, ck));
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 500));
    TU_OK(wmat_trainer_load_checkpoint(b, ck));
    steps(a, 3);
    steps(b, 3);
    size_t n1, n2;
    float *pa = wmat__trainer_params(a, &n1), *pb = wmat__trainer_params(b, &n2);
    assert_int_equal(n1, n2);
    if (memcmp(pa, pb, n1 * sizeof(float))) fail_msg("%s: resumed weights differ", name);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void test_resume(void **state)
{
    (void)state;
    resume_check("miss");
    resume_check("eva");
}

static void refused(const char *name, int rank, int calib, const char *msg)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(200);
    wmat_model *m = tiny_model(19);
    wmat_train_params p = params(&oc, name, rank);
    if (calib) {
        p.adapter_calib = d;
        p.adapter_calib_n = 200;
    }
    wmat_trainer *t = NULL;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_null(t);
    if (!strstr(wmat_last_error(), msg)) fail_msg("%s rank %d: '%s' lacks '%s'", name, rank, wmat_last_error(), msg);
    wmat_model_free(m);
    free(d);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    refused("miss", 5, 0, "does not divide"); /* dim 16, hidden 24 */
    refused("miss", 32, 0, "larger than");
    refused("eva", 20, 1, "larger than the width");
    refused("eva", 4, 0, "calibration tokens");
    /* the kernel check itself */
    const wmat__adapter *a = wmat__adapter_find("miss");
    wmat__adapter_cfg c = {.rank = 3, .nt = 1};
    assert_int_equal(a->check(&c, NULL, 10, 6, "test"), WMAT_ERR_INVALID);
    c.rank = 12;
    assert_int_equal(a->check(&c, NULL, 10, 6, "test"), WMAT_ERR_INVALID);
    c.rank = 5;
    TU_OK(a->check(&c, NULL, 10, 6, "test"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_miss_forward_is_delta), cmocka_unit_test(test_miss_peft),
        cmocka_unit_test(test_eva_components),        cmocka_unit_test(test_eva_distribution),
        cmocka_unit_test(test_eva_peft),              cmocka_unit_test(test_resume),
        cmocka_unit_test(test_bad_inputs),
    };
    return tu_run_tests("eva_miss", tests, NULL, NULL);
}
