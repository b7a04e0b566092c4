/* VeRA and LaMDA (src/train/adapter_vera.c, adapter_lamda.c) beyond what
 * tests/test_train_registry.c checks of every adapter:
 *
 * - VeRA: trainable floats = sum over adapted layers of r + out; the PEFT
 *   file has PEFT's keys and shapes (base_model.vera_A (r, in_max),
 *   base_model.vera_B (out_max, r), ...q_proj.vera_lambda_b (out,) and
 *   vera_lambda_d (r,), no ".weight") and config (peft_type VERA, r,
 *   projection_prng_key, d_initial, save_projection, target_modules); at
 *   init d = 0.1 and b = 0; A and B are the same bytes before and after
 *   training and equal to a fresh init_shared (frozen, independent of the
 *   run's seed: two seeds give the same A, B); every layer's merged update
 *   (merged - base) equals diag(b) B[:out] diag(d) A[:, :in] computed in
 *   double from the file alone (q and k in HF's row order), 1e-5; a file
 *   merged into a model of another shape is refused.
 * - LaMDA: trainable floats = sum of r r + out r; A (fixed data) is the same
 *   bytes in checkpoints before and after training; with T = 20 steps and
 *   eta = 0.3, B's column c is frozen from step 6 (c + 1) on: after
 *   training, column c equals, bit for bit, what it was after 6 (c + 1)
 *   steps (weight decay 0.1 and AdamW's momentum would move it otherwise),
 *   column 3 (never frozen) and S still move.
 * - Both: the trainer's gradients of every adapter float against central
 *   differences of its own loss (h = 1e-2) on an f32 base, all seven
 *   linears (different shapes: VeRA's slices; q/k: VeRA's permuted B);
 *   merged model's logits = base + adapter logits within 1e-5; training
 *   on a q4_0 base lowers the loss and merges exactly as well; a run
 *   interrupted after 9 of 20 steps and resumed from its checkpoint ends
 *   with the same floats as an uninterrupted one. */
#include "train_util.h"
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

enum { RK = 4, L = 2 };

/* dim 32, hidden 64 (q4_0 takes 32-wide rows), 4 heads over 2 KV heads,
 * vocab 13, tied */
static wmat_model *tiny(uint64_t seed, int hidden) { return tu_tiny_model(seed, 32, hidden, L); }

/* every 2-D weight as q4_0 */
static void to_q4(wmat_model *m)
{
    const wmat_wkind *k = wmat__wkind_find("q4_0");
    assert_non_null(k);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim != 2) continue;
        wmat_tensor nt;
        memset(&nt, 0, sizeof nt);
        TU_OK(k->from_f32((const float *)t->data, t->shape[0], t->shape[1], &nt));
        char name[WMAT_NAME_MAX];
        memcpy(name, t->name, sizeof name);
        wmat__tensor_free_data(t);
        *t = nt;
        memcpy(t->name, name, sizeof name);
    }
}

static wmat_train_params params(wmat_context *oc, const char *adapter) { return tu_adapter_params(oc, adapter, RK); }

static void steps(wmat_trainer *t, int n, double *first, double *last)
{
    for (int i = 0; i < n; i++) {
        wmat_train_step_info info;
        TU_OK(wmat_trainer_step(t, &info));
        if (first && i == 0) *first = info.loss;
        if (last) *last = info.loss;
    }
}

static void lin_shape(const wmat_model *m, int k, int *out, int *in)
{
    const wmat_tensor *w = wmat_model_linear((wmat_model *)m, 0, (wmat_linear_kind)k);
    *out = (int)w->shape[0];
    *in = (int)w->shape[1];
}

/* Gradients of every trainable float against central differences of the
 * trainer's loss (float forward, double loss sum), h = 1e-2:
 * |analytic - fd| <= 2e-3 max|fd| + 2e-5 (a 1% error in the largest fails). */
/* The loss of the trainer on fixed windows (no backward). */
static double fixed_loss(wmat_trainer *t)
{
    int32_t *d = tu_pattern_tokens(64), inp[16], tgt[16];
    double s = 0, loss;
    for (int w = 0; w < 3; w++) {
        for (int i = 0; i < 16; i++) inp[i] = d[w * 16 + i], tgt[i] = d[w * 16 + i + 1];
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 1, &loss));
        s += loss;
    }
    free(d);
    return s / 3;
}

/* The merged model's logits equal the trainer's (base + adapter), 1e-5. */
static void merged_equals_adapter(wmat_trainer *t, const char *who)
{
    int32_t inp[16], tgt[16];
    for (int i = 0; i < 16; i++) inp[i] = (i * 5 + 1) % 13, tgt[i] = (i * 3 + 2) % 13;
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1, 1, 1, &loss));
    float un[16 * 13], lg[8 * 13];
    memcpy(un, wmat__trainer_logits(t), sizeof un);
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    for (int w = 0; w < 2; w++) {
        wmat_runtime *rt;
        TU_OK(wmat_runtime_create(&rt, merged, &rp));
        TU_OK(wmat_forward(rt, inp + 8 * w, 8, lg));
        for (int i = 0; i < 8 * 13; i++)
            if (!(fabsf(lg[i] - un[w * 8 * 13 + i]) <= 1e-5f * (1 + fabsf(lg[i]))))
                fail_msg("%s: merged vs base + adapter logit %d: %.7g vs %.7g", who, i, lg[i], un[w * 8 * 13 + i]);
        wmat_runtime_free(rt);
    }
}

/* ------------------------------------------------------------ VeRA */

static const char *const mods[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

static const wmat_st_tensor *need(wmat_st_file *f, const char *name, int ndim, int64_t d0, int64_t d1)
{
    const wmat_st_tensor *t = wmat__st_find(f, name);
    if (!t) fail_msg("PEFT file: no tensor %s", name);
    if (t->dtype != WMAT_ST_F32 || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        fail_msg("PEFT file: %s has ndim %d shape (%lld, %lld), want %d (%lld, %lld)", name, t->ndim,
                 (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), ndim, (long long)d0,
                 (long long)d1);
    return t;
}

static float *copy_out(const wmat_st_tensor *t)
{
    float *x = malloc(t->nbytes);
    memcpy(x, t->data, t->nbytes);
    return x;
}

static void test_vera(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(3, 64);
    wmat_train_params p = params(&oc, "vera");
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    int32_t *d = tu_pattern_tokens(400);
    TU_OK(wmat_trainer_set_data(t, d, 400));
    /* trainable: r + out per adapted layer */
    size_t n, want = 0;
    wmat__trainer_params(t, &n);
    int in_max = 0, out_max = 0;
    for (int k = 0; k < 7; k++) {
        int o, i;
        lin_shape(m, k, &o, &i);
        want += (size_t)L * (RK + o);
        in_max = i > in_max ? i : in_max;
        out_max = o > out_max ? o : out_max;
    }
    assert_int_equal(n, want);
    assert_int_equal(in_max, 64);
    assert_int_equal(out_max, 64);

    /* the file at init, then after training */
    char d0[64], d1[64], path[4200];
    snprintf(d0, sizeof d0, "%s", tu_tmp("vera0"));
    snprintf(d1, sizeof d1, "%s", tu_tmp("vera1"));
    TU_OK(wmat_trainer_save_lora(t, d0));
    const double before = fixed_loss(t);
    steps(t, 15, NULL, NULL);
    const double after = fixed_loss(t);
    print_message("vera: loss %.4f -> %.4f\n", before, after);
    assert_true(after < before - 0.05);
    TU_OK(wmat_trainer_save_lora(t, d1));

    /* adapter_config.json */
    snprintf(path, sizeof path, "%s/adapter_config.json", d1);
    char *text;
    size_t len;
    TU_OK(wmat_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "VERA");
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, RK);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "projection_prng_key")));
    assert_true(fabs(cJSON_GetObjectItem(j, "d_initial")->valuedouble - 0.1) < 1e-9);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "save_projection")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "target_modules")), 7);
    cJSON_Delete(j);

    /* tensors: keys and shapes as PEFT writes them */
    wmat_st_file *f0, *f1;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d0);
    TU_OK(wmat__st_open(&f0, path));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d1);
    TU_OK(wmat__st_open(&f1, path));
    assert_int_equal(f1->n_tensors, 2 + L * 7 * 2);
    const wmat_st_tensor *A0 = need(f0, "base_model.vera_A", 2, RK, in_max),
                         *B0 = need(f0, "base_model.vera_B", 2, out_max, RK),
                         *A1 = need(f1, "base_model.vera_A", 2, RK, in_max),
                         *B1 = need(f1, "base_model.vera_B", 2, out_max, RK);
    /* frozen: the same bytes after training, and those of a fresh init (the
     * projection key's, not the run's seed) */
    assert_memory_equal(A0->data, A1->data, A0->nbytes);
    assert_memory_equal(B0->data, B1->data, B0->nbytes);
    const wmat__adapter *va = wmat__adapter_find("vera");
    wmat__adapter_cfg vc = {.rank = RK, .in_max = in_max, .out_max = out_max};
    float *fresh = malloc(wmat__adapter_shared_floats(va, &vc) * sizeof(float));
    TU_OK(va->init_shared(&vc, fresh));
    assert_memory_equal(fresh, A1->data, A1->nbytes);
    assert_memory_equal(fresh + (size_t)RK * in_max, B1->data, B1->nbytes);
    free(fresh);
    float *A = copy_out(A1), *B = copy_out(B1);

    /* every layer's update, from the file alone, against the merged model */
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++) {
            int o, in;
            lin_shape(m, k, &o, &in);
            char nb[160], nd[160];
            snprintf(nb, sizeof nb, "base_model.model.model.layers.%d.%s.vera_lambda_b", l, mods[k]);
            snprintf(nd, sizeof nd, "base_model.model.model.layers.%d.%s.vera_lambda_d", l, mods[k]);
            const float *b0 = need(f0, nb, 1, o, 0)->data, *dd0 = need(f0, nd, 1, RK, 0)->data;
            for (int i = 0; i < o; i++) assert_true(b0[i] == 0.0f);
            for (int i = 0; i < RK; i++) assert_true(dd0[i] == 0.1f);
            float *b = copy_out(need(f1, nb, 1, o, 0)), *dv = copy_out(need(f1, nd, 1, RK, 0));
            const wmat_tensor *W0 = wmat_model_linear(m, l, (wmat_linear_kind)k),
                              *W1 = wmat_model_linear(merged, l, (wmat_linear_kind)k);
            float *delta = malloc((size_t)o * in * sizeof(float)), *hf = malloc((size_t)o * in * sizeof(float));
            for (size_t i = 0; i < (size_t)o * in; i++) delta[i] = ((float *)W1->data)[i] - ((float *)W0->data)[i];
            if (k <= 1) /* q, k: HF's row order, the file's */
                wmat__rope_permute_hf(hf, delta, k == 0 ? 4 : 2, 8, in);
            else
                memcpy(hf, delta, (size_t)o * in * sizeof(float));
            double mx = 0, err = 0;
            for (int r = 0; r < o; r++)
                for (int c = 0; c < in; c++) {
                    double s = 0;
                    for (int q = 0; q < RK; q++) s += (double)B[(size_t)r * RK + q] * dv[q] * A[(size_t)q * in_max + c];
                    s *= b[r];
                    mx = fmax(mx, fabs(s));
                    err = fmax(err, fabs(s - hf[(size_t)r * in + c]));
                }
            if (!(mx > 1e-4 && err <= 1e-5 * (1 + mx)))
                fail_msg("vera: layer %d %s: merged update vs diag(b) B diag(d) A from the file: %.3g (max %.3g)", l,
                         mods[k], err, mx);
            free(b), free(dv), free(delta), free(hf);
        }
    free(A), free(B);
    wmat__st_close(f0);
    wmat__st_close(f1);
    merged_equals_adapter(t, "vera");
    tu_trainer_fd_check(t, "vera");

    /* another seed: other batches, the same A and B */
    wmat_train_params p2 = p;
    p2.seed = 99;
    wmat_trainer *t2;
    TU_OK(wmat_trainer_create(&t2, m, &p2));
    const char *d2 = tu_tmp("vera2");
    TU_OK(wmat_trainer_save_lora(t2, d2));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d2);
    wmat_st_file *f2;
    TU_OK(wmat__st_open(&f2, path));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d0);
    TU_OK(wmat__st_open(&f0, path));
    assert_memory_equal(wmat__st_find(f2, "base_model.vera_A")->data, wmat__st_find(f0, "base_model.vera_A")->data,
                        wmat__st_find(f0, "base_model.vera_A")->nbytes);
    wmat__st_close(f0);
    wmat__st_close(f2);
    wmat_trainer_free(t2);

    /* a file for another model shape: refused, naming the problem */
    wmat_model *other = tiny(3, 96);
    assert_int_not_equal(wmat_lora_merge_peft(other, d1), WMAT_OK);
    print_message("other shape: %s\n", wmat_last_error());
    assert_non_null(strstr(wmat_last_error(), "vera_A"));
    wmat_model_free(other);

    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ LaMDA */

static const void *fixed_of(const char *ckpt, wmat_st_file **f)
{
    TU_OK(wmat__st_open(f, ckpt));
    const wmat_st_tensor *x = wmat__st_find(*f, "adapter.fixed");
    assert_non_null(x);
    return x->data;
}

static void test_lamda(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(5, 64);
    wmat_train_params p = params(&oc, "lamda");
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    int32_t *d = tu_pattern_tokens(400);
    TU_OK(wmat_trainer_set_data(t, d, 400));
    size_t n, want = 0, fixed_want = 0;
    for (int k = 0; k < 7; k++) {
        int o, i;
        lin_shape(m, k, &o, &i);
        want += (size_t)L * (RK * RK + (size_t)o * RK);
        fixed_want += (size_t)L * RK * i * sizeof(float);
    }
    float *p0 = wmat__trainer_params(t, &n);
    assert_int_equal(n, want);
    TU_OK(wmat_trainer_save_checkpoint(t, tu_tmp("lamda0.ckpt")));
    /* snapshots after 6, 12, 18 steps (T = 20, eta 0.3: column c frozen from step 6 (c + 1)) */
    float *snap[3];
    const double before = fixed_loss(t);
    for (int s = 0; s < 3; s++) {
        steps(t, 6, NULL, NULL);
        snap[s] = malloc(n * sizeof(float));
        memcpy(snap[s], p0, n * sizeof(float));
    }
    steps(t, 2, NULL, NULL);
    const double after = fixed_loss(t);
    print_message("lamda: loss %.4f -> %.4f\n", before, after);
    assert_true(after < before - 0.05);
    /* walk the layout: per layer, per linear: S (r, r), then B (out, r) */
    size_t off = 0;
    int moved3 = 0, movedS = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++) {
            int o, i;
            lin_shape(m, k, &o, &i);
            for (int j = 0; j < RK * RK; j++) movedS += p0[off + j] != snap[2][off + j];
            off += RK * RK;
            for (int r = 0; r < o; r++)
                for (int c = 0; c < RK; c++) {
                    const size_t at = off + (size_t)r * RK + c;
                    if (c < 3) {
                        /* frozen since snapshot c: bit-identical; and it trained before */
                        if (memcmp(&p0[at], &snap[c][at], sizeof(float)))
                            fail_msg("lamda: layer %d %s B[%d][%d] moved after its freeze: %.9g vs %.9g", l, mods[k], r,
                                     c, p0[at], snap[c][at]);
                        if (c + 1 < 3 && r == 0) assert_true(snap[c][at] != 0.0f);
                    } else {
                        moved3 += p0[at] != snap[2][at];
                    }
                }
            off += (size_t)o * RK;
        }
    assert_int_equal(off, n);
    assert_true(moved3 > 0 && movedS > 0);
    /* A: fixed data, the same bytes in checkpoints before and after */
    TU_OK(wmat_trainer_save_checkpoint(t, tu_tmp("lamda1.ckpt")));
    wmat_st_file *c0, *c1;
    const void *x0 = fixed_of(tu_tmp("lamda0.ckpt"), &c0), *x1 = fixed_of(tu_tmp("lamda1.ckpt"), &c1);
    assert_int_equal(wmat__st_find(c0, "adapter.fixed")->nbytes, fixed_want);
    assert_memory_equal(x0, x1, fixed_want);
    wmat__st_close(c0);
    wmat__st_close(c1);
    merged_equals_adapter(t, "lamda");
    tu_trainer_fd_check(t, "lamda");
    /* PEFT has no LaMDA */
    assert_int_not_equal(wmat_trainer_save_lora(t, tu_tmp("lamda_peft")), WMAT_OK);
    for (int s = 0; s < 3; s++) free(snap[s]);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ resume */

/* Interrupted after 9 of 20 steps and resumed from the checkpoint (the
 * shared and fixed data, the step count that decides LaMDA's frozen
 * columns): the same floats as an uninterrupted run. */
static void test_resume(void **state)
{
    (void)state;
    const char *names[2] = {"vera", "lamda"};
    for (int a = 0; a < 2; a++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tiny(11, 64);
        wmat_train_params p = params(&oc, names[a]);
        int32_t *d = tu_pattern_tokens(400);
        wmat_trainer *t, *u, *v;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, d, 400));
        steps(t, 20, NULL, NULL);
        TU_OK(wmat_trainer_create(&u, m, &p));
        TU_OK(wmat_trainer_set_data(u, d, 400));
        steps(u, 9, NULL, NULL);
        TU_OK(wmat_trainer_save_checkpoint(u, tu_tmp("resume.ckpt")));
        wmat_trainer_free(u);
        TU_OK(wmat_trainer_create(&v, m, &p));
        TU_OK(wmat_trainer_set_data(v, d, 400));
        TU_OK(wmat_trainer_load_checkpoint(v, tu_tmp("resume.ckpt")));
        steps(v, 11, NULL, NULL);
        size_t n1, n2;
        const float *p1 = wmat__trainer_params(t, &n1), *p2 = wmat__trainer_params(v, &n2);
        assert_int_equal(n1, n2);
        if (memcmp(p1, p2, n1 * sizeof(float)))
            fail_msg("%s: the resumed run differs from the uninterrupted one", names[a]);
        wmat_trainer_free(t);
        wmat_trainer_free(v);
        wmat_model_free(m);
        free(d);
    }
}

/* ------------------------------------------------------------ quantized base */

static void test_q4_base(void **state)
{
    (void)state;
    const char *names[2] = {"vera", "lamda"};
    for (int a = 0; a < 2; a++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tiny(7, 64);
        to_q4(m);
        assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "q4_0");
        wmat_train_params p = params(&oc, names[a]);
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        int32_t *d = tu_pattern_tokens(400);
        TU_OK(wmat_trainer_set_data(t, d, 400));
        const double before = fixed_loss(t);
        steps(t, 20, NULL, NULL);
        const double after = fixed_loss(t);
        print_message("%s on q4_0: loss %.4f -> %.4f\n", names[a], before, after);
        assert_true(after < before - 0.05);
        merged_equals_adapter(t, names[a]);
        wmat_trainer_free(t);
        wmat_model_free(m);
        free(d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vera),
        cmocka_unit_test(test_lamda),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_q4_base),
    };
    return tu_run_tests("vera_lamda", tests, NULL, NULL);
}
