/* AdaLoRA (src/train/adapter_adalora.c) beyond what
 * tests/test_train_registry.c checks of every adapter (finite-difference
 * backward, merge, PEFT round trip):
 *
 * - budget schedule: wmat__adalora_budget at chosen steps against PEFT's
 *   formula b0 before t_init, floor(bT + (b0 - bT)(1 - (t - ti)/(T - tf -
 *   ti))^3) between, bT after T - t_final; masking only every deltaT steps
 *   in between, always after; the 10% / 20% defaults;
 * - importance: two after_step calls on one small layer (no masking yet)
 *   against Ibar, Ubar computed by hand from |p g| with beta 0.85;
 * - masking threshold: scores set through the averages (g = 0, so they only
 *   decay, in a known way) on two layers; a step whose budget drops 3 of 6
 *   triplets zeroes exactly the E of the 3 lowest scores (one of which is
 *   lifted above the rest by its row of A: A's mean counts), leaves the
 *   others' E as they were, and writes the pattern;
 * - orthogonality penalty: its value is 0 for orthonormal A, B and matches
 *   a hand formula otherwise; its gradient (extra_loss) against central
 *   differences; the trainer's gradient of batch loss + penalty over a
 *   whole tiny model (all seven linears) against central differences;
 * - training: after every masking step of the budgeting phase the count of
 *   nonzero E is the budget of that step; at the end it is target_r x the
 *   adapted matrices (the final budget); the rank pattern of the PEFT file
 *   agrees with the trainer's E, its tensors are PEFT's keys and shapes
 *   (lora_A (r_l, in), lora_E (r_l, 1), lora_B (out, r_l), bare keys),
 *   bit for bit the kept rows, and merging the file gives the trainer's
 *   merged model (1e-6); the merged model's logits equal base + adapter;
 * - resume: interrupted after 9 of 20 steps (inside the budgeting phase)
 *   and resumed from its checkpoint (importance averages and pattern
 *   included), the run ends with the same checkpoint bytes. */
#include "train_util.h"
#include "io/safetensors.h"
#include "train/adapter.h"
#include "train/train.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat__adapter *ada(void)
{
    const wmat__adapter *a = wmat__adapter_find("adalora");
    assert_non_null(a);
    return a;
}

/* ------------------------------------------------------------ schedule */

static void test_budget(void **state)
{
    (void)state;
    wmat__adapter_cfg c = {.rank = 12, .ada = {8, 10, 20, 5, 0.5f}, .steps = 100};
    const int b0 = 12 * 6, bT = 8 * 6;
    const int at[] = {0, 5, 10, 11, 15, 20, 45, 50, 79, 80, 81, 99};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        const int t = at[i];
        int mask, want, want_mask;
        if (t <= 10) {
            want = b0;
            want_mask = 0;
        } else if (t > 80) {
            want = bT;
            want_mask = 1;
        } else {
            const double m = 1.0 - (t - 10) / 70.0;
            want = (int)floor(bT + (b0 - bT) * m * m * m);
            want_mask = t % 5 == 0;
        }
        const int b = wmat__adalora_budget(&c, b0, bT, t, &mask);
        print_message("t %2d: budget %d mask %d\n", t, b, mask);
        assert_int_equal(b, want);
        assert_int_equal(mask, want_mask);
    }
    /* hand values: t = 11: floor(48 + 24 (69/70)^3) = 70; t = 45: 48 + 24 0.125 = 51; t = 80: 48 */
    int mask;
    assert_int_equal(wmat__adalora_budget(&c, b0, bT, 11, &mask), 70);
    assert_int_equal(wmat__adalora_budget(&c, b0, bT, 45, &mask), 51);
    assert_int_equal(wmat__adalora_budget(&c, b0, bT, 80, &mask), 48);
    /* defaults: t_init 10%, t_final 20% of the steps, deltaT 1 */
    wmat__adapter_cfg d = {.rank = 12, .ada = {0, -1, -1, 0, -1.0f}, .steps = 200};
    assert_int_equal(wmat__adalora_budget(&d, b0, bT, 20, &mask), b0);
    assert_int_equal(mask, 0);
    assert_true(wmat__adalora_budget(&d, b0, bT, 21, &mask) < b0);
    assert_int_equal(mask, 1);
    assert_int_equal(wmat__adalora_budget(&d, b0, bT, 160, &mask), bT);
    assert_int_equal(wmat__adalora_budget(&d, b0, bT, 161, &mask), bT);
    /* a schedule without a budgeting phase is refused */
    wmat__adapter_cfg e = {.rank = 12, .ada = {8, 50, 50, 1, 0.5f}, .steps = 100};
    assert_int_equal(ada()->check(&e, NULL, 16, 16, "test"), WMAT_ERR_INVALID);
    wmat__adapter_cfg f = {.rank = 4, .ada = {8, 1, 1, 1, 0.5f}, .steps = 100};
    assert_int_equal(ada()->check(&f, NULL, 16, 16, "test"), WMAT_ERR_INVALID); /* target above the rank */
}

/* ------------------------------------------------------------ one layer by hand */

/* The layout of a layer's fixed data (adapter_adalora.c): 4 header floats
 * (0: a pattern exists), the pattern (r), then Ibar, Ubar of A (r in each),
 * of E (r each), of B (out r each). */
typedef struct {
    float *hdr, *pat, *iA, *uA, *iE, *uE, *iB, *uB;
} lay;
static lay layout(float *f, int r, int in, int out)
{
    lay s;
    s.hdr = f;
    s.pat = f + 4;
    s.iA = s.pat + r;
    s.uA = s.iA + r * in;
    s.iE = s.uA + r * in;
    s.uE = s.iE + r;
    s.iB = s.uE + r;
    s.uB = s.iB + out * r;
    return s;
}

typedef struct {
    float *w[3], *g[3];
    void *fixed;
    wmat__adapter_layer l;
} one;

static void one_make(one *o, const wmat__adapter_cfg *c, int in, int out, int layer)
{
    const int r = c->rank;
    o->w[0] = calloc((size_t)r * in, sizeof(float));
    o->w[1] = calloc((size_t)r, sizeof(float));
    o->w[2] = calloc((size_t)out * r, sizeof(float));
    o->g[0] = calloc((size_t)r * in, sizeof(float));
    o->g[1] = calloc((size_t)r, sizeof(float));
    o->g[2] = calloc((size_t)out * r, sizeof(float));
    o->fixed = calloc(ada()->fixed_bytes(c, in, out), 1);
    o->l = (wmat__adapter_layer){c, o->w, o->g, o->fixed, layer, 0, in, out};
}
static void one_free(one *o)
{
    for (int i = 0; i < 3; i++) free(o->w[i]), free(o->g[i]);
    free(o->fixed);
}

static void test_importance(void **state)
{
    (void)state;
    enum { r = 2, in = 3, out = 2 };
    wmat__adapter_cfg c = {.rank = r, .ada = {1, 5, 2, 1, 0.5f}, .steps = 10};
    one o;
    one_make(&o, &c, in, out, 0);
    wmat_rng g;
    wmat_rng_seed(&g, 3);
    TU_OK(ada()->init(&c, o.w, o.fixed, NULL, NULL, in, out, &g));
    /* step 0: p, g given; step 1: other g */
    float p0[r * in] = {0.5f, -1.0f, 2.0f, 0.25f, 0.0f, -3.0f};
    float g0[r * in] = {-0.4f, 0.1f, 0.05f, 2.0f, 7.0f, 0.01f};
    float g1[r * in] = {0.4f, 0.3f, -0.05f, 0.0f, 1.0f, 0.02f};
    float e0[r] = {1.5f, -0.5f}, ge0[r] = {0.2f, 0.6f}, ge1[r] = {-0.1f, 0.0f};
    memcpy(o.w[0], p0, sizeof p0);
    memcpy(o.w[1], e0, sizeof e0);
    for (int i = 0; i < out * r; i++) o.w[2][i] = 0.1f * (float)(i + 1), o.g[2][i] = 1.0f;
    memcpy(o.g[0], g0, sizeof g0);
    memcpy(o.g[1], ge0, sizeof ge0);
    TU_OK(ada()->after_step(&c, &o.l, 1, 0, 10));
    memcpy(o.g[0], g1, sizeof g1);
    memcpy(o.g[1], ge1, sizeof ge1);
    TU_OK(ada()->after_step(&c, &o.l, 1, 1, 10));
    const lay s = layout(o.fixed, r, in, out);
    /* by hand: I1 = |p g0|, Ibar1 = 0.15 I1, Ubar1 = 0.15 |I1 - Ibar1|;
     * I2 = |p g1|, Ibar2 = 0.85 Ibar1 + 0.15 I2, Ubar2 = 0.85 Ubar1 + 0.15 |I2 - Ibar2| */
    for (int i = 0; i < r * in + r; i++) {
        const double p = i < r * in ? p0[i] : e0[i - r * in];
        const double a = i < r * in ? g0[i] : ge0[i - r * in], b = i < r * in ? g1[i] : ge1[i - r * in];
        const double I1 = fabs(p * a), ib1 = 0.15 * I1, ub1 = 0.15 * fabs(I1 - ib1);
        const double I2 = fabs(p * b), ib2 = 0.85 * ib1 + 0.15 * I2, ub2 = 0.85 * ub1 + 0.15 * fabs(I2 - ib2);
        const float gib = i < r * in ? s.iA[i] : s.iE[i - r * in], gub = i < r * in ? s.uA[i] : s.uE[i - r * in];
        if (!(fabs(gib - ib2) <= 1e-6 * (1 + ib2) && fabs(gub - ub2) <= 1e-6 * (1 + ub2)))
            fail_msg("entry %d: Ibar %.8g Ubar %.8g, by hand %.8g %.8g", i, gib, gub, ib2, ub2);
    }
    /* one hand number: A[0][0]: I1 = 0.2, Ibar1 = 0.03, Ubar1 = 0.0255; I2 = 0.2: Ibar2 = 0.0555, Ubar2 = 0.04335 */
    assert_true(fabsf(s.iA[0] - 0.0555f) < 1e-7f && fabsf(s.uA[0] - 0.04335f) < 1e-7f);
    /* step 1 <= t_init: no masking, E untouched */
    assert_true(o.w[1][0] == e0[0] && o.w[1][1] == e0[1] && s.hdr[0] == 0.0f);
    one_free(&o);
}

static void test_mask_threshold(void **state)
{
    (void)state;
    enum { r = 3, in = 4, out = 5 };
    /* T = 100, no t_init / t_final, target 1: b0 = 6, bT = 2; step 30:
     * floor(2 + 4 0.7^3) = 3, so 3 triplets go */
    wmat__adapter_cfg c = {.rank = r, .ada = {1, 0, 0, 1, 0.5f}, .steps = 100};
    int mask;
    assert_int_equal(wmat__adalora_budget(&c, 6, 2, 30, &mask), 3);
    assert_true(mask);
    one o[2];
    wmat__adapter_layer ly[2];
    const float v[2][r] = {{0.5f, 0.1f, 0.9f}, {0.3f, 0.7f, 0.2f}};
    for (int k = 0; k < 2; k++) {
        one_make(&o[k], &c, in, out, k);
        ly[k] = o[k].l;
        lay s = layout(o[k].fixed, r, in, out);
        for (int j = 0; j < r; j++) {
            o[k].w[1][j] = (float)(1 + j + 3 * k); /* E, nonzero */
            s.iE[j] = s.uE[j] = v[k][j];          /* g = 0: score 0.830875 v^2 after the step's decay */
        }
    }
    /* layer 1, triplet 0 (v 0.3): its row of A lifts it above all */
    lay s1 = layout(o[1].fixed, r, in, out);
    for (int i = 0; i < in; i++) s1.iA[i] = s1.uA[i] = 2.0f;
    TU_OK(ada()->after_step(&c, ly, 2, 30, 100));
    /* masked: the 3 lowest of {0.5, 0.1, 0.9 | lifted, 0.7, 0.2}: 0.1, 0.2, 0.5 */
    const int keep[2][r] = {{0, 0, 1}, {1, 1, 0}};
    for (int k = 0; k < 2; k++) {
        lay s = layout(o[k].fixed, r, in, out);
        assert_true(s.hdr[0] == 1.0f);
        for (int j = 0; j < r; j++) {
            const float want = keep[k][j] ? (float)(1 + j + 3 * k) : 0.0f;
            if (o[k].w[1][j] != want) fail_msg("layer %d triplet %d: E %g, want %g", k, j, o[k].w[1][j], want);
            assert_true(s.pat[j] == (float)keep[k][j]);
        }
    }
    /* PEFT rank of each layer: the kept triplets */
    assert_int_equal(ada()->peft_rank(&c, o[0].fixed, in, out), 1);
    assert_int_equal(ada()->peft_rank(&c, o[1].fixed, in, out), 2);
    for (int k = 0; k < 2; k++) one_free(&o[k]);
}

/* ------------------------------------------------------------ regularizer */

static void test_orth(void **state)
{
    (void)state;
    enum { r = 3 };
    const int ins[2] = {5, 7}, outs[2] = {4, 6};
    wmat__adapter_cfg c = {.rank = r, .ada = {2, 0, 0, 1, 0.7f}, .steps = 10};
    one o[2];
    wmat__adapter_layer ly[2];
    wmat_rng g;
    wmat_rng_seed(&g, 9);
    for (int k = 0; k < 2; k++) {
        one_make(&o[k], &c, ins[k], outs[k], k);
        ly[k] = o[k].l;
    }
    /* orthonormal rows of A, columns of B: the penalty is 0 */
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < r; j++) o[k].w[0][j * ins[k] + j] = 1.0f, o[k].w[2][j * r + j] = 1.0f;
    }
    assert_true(fabs(ada()->extra_loss(&c, ly, 2)) < 1e-12);
    /* random: value = 0.7 / 4 sum (||A A^T - I||_F + ||B^T B - I||_F) */
    double want = 0;
    for (int k = 0; k < 2; k++) {
        const int in = ins[k], out = outs[k];
        for (int i = 0; i < r * in; i++) o[k].w[0][i] = 0.6f * wmat_rng_normal(&g);
        for (int i = 0; i < out * r; i++) o[k].w[2][i] = 0.6f * wmat_rng_normal(&g);
        double sa = 0, sb = 0;
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double a = -(i == j), b = -(i == j);
                for (int x = 0; x < in; x++) a += (double)o[k].w[0][i * in + x] * o[k].w[0][j * in + x];
                for (int x = 0; x < out; x++) b += (double)o[k].w[2][x * r + i] * o[k].w[2][x * r + j];
                sa += a * a;
                sb += b * b;
            }
        want += sqrt(sa) + sqrt(sb);
    }
    want *= (double)0.7f / 4; /* the weight is a float */
    for (int k = 0; k < 2; k++) memset(o[k].g[0], 0, sizeof(float) * r * ins[k]), memset(o[k].g[2], 0, sizeof(float) * r * outs[k]);
    const double v = ada()->extra_loss(&c, ly, 2);
    print_message("penalty %.9g, by hand %.9g\n", v, want);
    assert_true(fabs(v - want) <= 1e-9 * (1 + want));
    /* gradient against central differences of the value (no gradient pass) */
    wmat__adapter_layer nog[2] = {ly[0], ly[1]};
    nog[0].g = nog[1].g = NULL;
    double mx = 0, err = 0;
    for (int k = 0; k < 2; k++)
        for (int t = 0; t < 3; t += 2) {
            const size_t n = (size_t)r * (t == 0 ? ins[k] : outs[k]);
            for (size_t i = 0; i < n; i++) {
                float *x = &o[k].w[t][i];
                const float s0 = *x, h = 1e-3f;
                *x = s0 + h;
                const double fp = ada()->extra_loss(&c, nog, 2);
                *x = s0 - h;
                const double fm = ada()->extra_loss(&c, nog, 2);
                *x = s0;
                const double fd = (fp - fm) / (2.0 * (double)h);
                mx = fmax(mx, fabs(fd));
                err = fmax(err, fabs(fd - o[k].g[t][i]));
            }
        }
    print_message("penalty gradient: max |fd| %.3g, max |analytic - fd| %.3g\n", mx, err);
    assert_true(mx > 1e-2 && err <= 1e-3 * mx + 1e-6);
    for (int k = 0; k < 2; k++) one_free(&o[k]);
}

/* ------------------------------------------------------------ training */

enum { RK = 4, TGT = 2, NL = 2, STEPS = 30 };

static wmat_model *tiny(uint64_t seed) { return tu_tiny_model(seed, 16, 24, NL); }

static wmat_train_params params(wmat_context *oc)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.adapter = "adalora";
    p.batch = 2;
    p.ctx = 8;
    p.steps = STEPS;
    p.warmup = 2;
    p.lr = 3e-2f;
    p.lora_rank = RK;
    p.lora_alpha = 8;
    p.lora_targets = 0x7f;
    p.adalora_target_r = TGT;
    p.adalora_tinit = 3;
    p.adalora_tfinal = 6;
    p.adalora_deltat = 2;
    return p;
}

/* E of every adapted matrix from the flat parameters (layer order: A, E, B
 * per linear) into E (NL * 7 * RK). */
static void read_E(wmat_trainer *t, const wmat_model *m, float *E)
{
    size_t n, off = 0;
    const float *p = wmat__trainer_params(t, &n);
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < 7; k++) {
            const wmat_tensor *w = wmat_model_linear((wmat_model *)m, l, (wmat_linear_kind)k);
            const size_t in = (size_t)w->shape[1], out = (size_t)w->shape[0];
            off += RK * in;
            memcpy(E + (l * 7 + k) * RK, p + off, RK * sizeof(float));
            off += RK + out * RK;
        }
    assert_int_equal(off, n);
}

static void test_train(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(21);
    wmat_train_params p = params(&oc);
    int32_t *d = tu_pattern_tokens(600);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 600));
    const int nm = NL * 7, b0 = RK * nm, bT = TGT * nm;
    wmat__adapter_cfg c = {.rank = RK, .ada = {TGT, 3, 6, 2, -1.0f}, .steps = STEPS};
    float E[NL * 7 * RK];
    double first = 0, last = 0;
    for (int s = 0; s < STEPS; s++) {
        wmat_train_step_info info;
        TU_OK(wmat_trainer_step(t, &info));
        assert_true(info.aux_loss > 0 && info.aux_loss < info.loss);
        if (s == 0) first = info.loss - info.aux_loss;
        last = info.loss - info.aux_loss;
        int mask;
        const int b = wmat__adalora_budget(&c, b0, bT, s, &mask);
        read_E(t, m, E);
        int nz = 0;
        for (int i = 0; i < nm * RK; i++) nz += E[i] != 0.0f;
        if (s >= 1 && (mask || s == STEPS - 6)) {
            /* right after a masking step: exactly the budget */
            if (nz != b) fail_msg("step %d: %d nonzero E, budget %d", s, nz, b);
        }
        if (s == 0) assert_int_equal(nz, b0); /* E moved off 0 everywhere */
    }
    print_message("loss %.4f -> %.4f (without the penalty)\n", first, last);
    assert_true(last < first);
    read_E(t, m, E);
    int nz = 0;
    char pat[NL * 7 * (RK + 1) + 1], *q = pat;
    for (int j = 0; j < nm; j++) {
        int kept = 0;
        for (int i = 0; i < RK; i++) kept += E[j * RK + i] != 0.0f;
        nz += kept;
        *q++ = (char)('0' + kept);
    }
    *q = 0;
    print_message("final nonzero E %d (target %d x %d); ranks per matrix (layer 0 q..down, layer 1 ...): %s\n", nz, TGT,
                  nm, pat);
    assert_int_equal(nz, bT);

    /* PEFT file: layout, pattern, bits */
    const char *dir = tu_tmp("peft_adalora_layout");
    TU_OK(wmat_trainer_save_lora(t, dir));
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text;
    size_t len;
    TU_OK(wmat_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "ADALORA");
    assert_int_equal(cJSON_GetObjectItem(j, "init_r")->valueint, RK);
    assert_int_equal(cJSON_GetObjectItem(j, "target_r")->valueint, TGT);
    assert_int_equal(cJSON_GetObjectItem(j, "total_step")->valueint, STEPS);
    const cJSON *rp = cJSON_GetObjectItem(j, "rank_pattern");
    assert_true(cJSON_IsObject(rp));
    assert_int_equal(cJSON_GetArraySize(rp), nm);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, path));
    static const char *const mods[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    size_t np;
    const float *pp = wmat__trainer_params(t, &np);
    size_t off = 0;
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < 7; k++) {
            const wmat_tensor *w = wmat_model_linear(m, l, (wmat_linear_kind)k);
            const int in = (int)w->shape[1], out = (int)w->shape[0];
            const float *A = pp + off, *Ev = A + (size_t)RK * in, *B = Ev + RK;
            off += (size_t)RK * in + RK + (size_t)out * RK;
            char key[160];
            snprintf(key, sizeof key, "model.layers.%d.%s.lora_E", l, mods[k]);
            const cJSON *arr = cJSON_GetObjectItem(rp, key);
            if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != RK) fail_msg("rank_pattern: no %s of %d", key, RK);
            int rl = 0, keep[RK];
            for (int i = 0; i < RK; i++) {
                keep[i] = cJSON_IsTrue(cJSON_GetArrayItem(arr, i));
                assert_int_equal(keep[i], Ev[i] != 0.0f); /* the pattern is the trainer's nonzero E */
                rl += keep[i];
            }
            char nm_[3][200];
            const char *tk[3] = {"lora_A", "lora_E", "lora_B"};
            const wmat_st_tensor *st[3];
            for (int i = 0; i < 3; i++) {
                snprintf(nm_[i], sizeof nm_[i], "base_model.model.model.layers.%d.%s.%s", l, mods[k], tk[i]);
                st[i] = wmat__st_find(f, nm_[i]);
            }
            if (rl == 0) {
                for (int i = 0; i < 3; i++) assert_null(st[i]);
                continue;
            }
            for (int i = 0; i < 3; i++)
                if (!st[i] || st[i]->ndim != 2) fail_msg("PEFT file: no 2-D %s", nm_[i]);
            assert_true(st[0]->shape[0] == rl && st[0]->shape[1] == in);
            assert_true(st[1]->shape[0] == rl && st[1]->shape[1] == 1);
            assert_true(st[2]->shape[0] == out && st[2]->shape[1] == rl);
            float *fa = malloc(st[0]->nbytes), *fe = malloc(st[1]->nbytes), *fb = malloc(st[2]->nbytes);
            memcpy(fa, st[0]->data, st[0]->nbytes);
            memcpy(fe, st[1]->data, st[1]->nbytes);
            memcpy(fb, st[2]->data, st[2]->nbytes);
            int q2 = 0;
            for (int i = 0; i < RK; i++) {
                if (!keep[i]) continue;
                assert_memory_equal(fa + (size_t)q2 * in, A + (size_t)i * in, (size_t)in * sizeof(float));
                assert_true(fe[q2] == Ev[i]);
                if (k != WMAT_LIN_Q && k != WMAT_LIN_K) /* q/k rows are in HF's rotary order */
                    for (int o = 0; o < out; o++) assert_true(fb[(size_t)o * rl + q2] == B[(size_t)o * RK + i]);
                q2++;
            }
            free(fa), free(fe), free(fb);
        }
    wmat__st_close(f);
    cJSON_Delete(j);
    /* merged file = the trainer's merged model */
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    wmat_model *m2 = tiny(21);
    TU_OK(wmat_lora_merge_peft(m2, dir));
    double moved = 0;
    for (int i = 0; i < wmat_model_n_tensors(m2); i++) {
        const wmat_tensor *a = wmat_model_tensor(m2, i), *b = wmat_model_find(merged, a->name),
                          *o0 = wmat_model_find(m, a->name);
        for (int64_t e = 0; e < wmat_tensor_nelem(a); e++) {
            const float x = ((float *)a->data)[e], y = ((float *)b->data)[e];
            if (!(fabsf(x - y) < 1e-6f)) fail_msg("PEFT merge differs in %s[%lld]: %g vs %g", a->name, (long long)e, x, y);
            moved = fmax(moved, fabs(x - ((float *)o0->data)[e]));
        }
    }
    assert_true(moved > 1e-4);
    wmat_model_free(m2);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* The trainer's gradient of loss + penalty (the batch's backward plus
 * extra_loss over the trainer's own tensors) against central differences
 * of that sum, every trainable float, h = 3e-3: |analytic - fd| <= 2e-3
 * max|fd| + 2e-5. */
static void test_trainer_fd(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(5);
    wmat_train_params p = params(&oc);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    size_t n;
    float *pp = wmat__trainer_params(t, &n), *g = wmat__trainer_grads(t, &n);
    wmat_rng r;
    wmat_rng_seed(&r, 17);
    for (size_t i = 0; i < n; i++) pp[i] = 0.3f * wmat_rng_normal(&r); /* E, A, B all away from 0 */
    /* the adapted layers over the flat parameters (A, E, B per linear, layer order) */
    wmat__adapter_cfg c = {.rank = RK, .alpha = 8, .ada = {TGT, 3, 6, 2, -1.0f}, .steps = STEPS};
    wmat__adapter_layer ly[NL * 7];
    float *w[NL * 7][3], *gw[NL * 7][3];
    size_t off = 0;
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < 7; k++) {
            const wmat_tensor *wt = wmat_model_linear(m, l, (wmat_linear_kind)k);
            const int in = (int)wt->shape[1], out = (int)wt->shape[0], j = l * 7 + k;
            w[j][0] = pp + off, gw[j][0] = g + off;
            off += (size_t)RK * in;
            w[j][1] = pp + off, gw[j][1] = g + off;
            off += RK;
            w[j][2] = pp + off, gw[j][2] = g + off;
            off += (size_t)out * RK;
            ly[j] = (wmat__adapter_layer){&c, w[j], gw[j], NULL, l, k, in, out};
        }
    assert_int_equal(off, n);
    int32_t inp[16], tgt[16];
    int32_t *d = tu_pattern_tokens(17);
    for (int i = 0; i < 16; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    free(d);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 0, &loss));
    const double pen = ada()->extra_loss(&c, ly, NL * 7);
    assert_true(pen > 0);
    float *an = malloc(n * sizeof(float));
    memcpy(an, g, n * sizeof(float));
    wmat__adapter_layer nog[NL * 7];
    for (int j = 0; j < NL * 7; j++) nog[j] = ly[j], nog[j].g = NULL;
    double mx = 0, err = 0;
    size_t worst = 0;
    double *fd = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const float s0 = pp[i], h = 3e-3f; /* the penalty is curved: 1e-2 is too coarse */
        double lp, lm;
        pp[i] = s0 + h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lp));
        lp += ada()->extra_loss(&c, nog, NL * 7);
        pp[i] = s0 - h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lm));
        lm += ada()->extra_loss(&c, nog, NL * 7);
        pp[i] = s0;
        fd[i] = (lp - lm) / (2.0 * h);
        mx = fmax(mx, fabs(fd[i]));
    }
    for (size_t i = 0; i < n; i++)
        if (!(fabs(an[i] - fd[i]) <= err)) err = fabs(an[i] - fd[i]), worst = i;
    print_message("loss %.4f + penalty %.4f: %zu gradients, max |fd| %.3g, max |analytic - fd| %.3g\n", loss, pen, n, mx,
                  err);
    if (!(mx > 1e-3 && err <= 2e-3 * mx + 2e-5))
        fail_msg("max |analytic - fd| = %.3g at %zu (%.6g vs %.6g), max |fd| %.3g", err, worst, an[worst], fd[worst], mx);
    free(an), free(fd);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

static void test_resume(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(11);
    wmat_train_params p = params(&oc);
    p.steps = 20;
    p.adalora_tinit = 2;
    p.adalora_tfinal = 4;
    int32_t *d = tu_pattern_tokens(400);
    wmat_trainer *t, *u, *v;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    for (int i = 0; i < 20; i++) TU_OK(wmat_trainer_step(t, NULL));
    TU_OK(wmat_trainer_create(&u, m, &p));
    TU_OK(wmat_trainer_set_data(u, d, 400));
    for (int i = 0; i < 9; i++) TU_OK(wmat_trainer_step(u, NULL));
    TU_OK(wmat_trainer_save_checkpoint(u, tu_tmp("ada_resume.ckpt")));
    wmat_trainer_free(u);
    TU_OK(wmat_trainer_create(&v, m, &p));
    TU_OK(wmat_trainer_set_data(v, d, 400));
    TU_OK(wmat_trainer_load_checkpoint(v, tu_tmp("ada_resume.ckpt")));
    for (int i = 0; i < 11; i++) TU_OK(wmat_trainer_step(v, NULL));
    TU_OK(wmat_trainer_save_checkpoint(t, tu_tmp("ada_full.ckpt")));
    TU_OK(wmat_trainer_save_checkpoint(v, tu_tmp("ada_resumed.ckpt")));
    size_t na, nb;
    unsigned char *fa = tu_slurp(tu_tmp("ada_full.ckpt"), &na), *fb = tu_slurp(tu_tmp("ada_resumed.ckpt"), &nb);
    assert_int_equal(na, nb);
    if (memcmp(fa, fb, na)) fail_msg("adalora: the resumed run's checkpoint differs from the uninterrupted one's");
    free(fa), free(fb);
    /* a checkpoint of another schedule is refused */
    wmat_train_params q = p;
    q.adalora_target_r = 3;
    wmat_trainer *w;
    TU_OK(wmat_trainer_create(&w, m, &q));
    assert_int_not_equal(wmat_trainer_load_checkpoint(w, tu_tmp("ada_resume.ckpt")), WMAT_OK);
    wmat_trainer_free(w);
    wmat_trainer_free(t);
    wmat_trainer_free(v);
    wmat_model_free(m);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget),      cmocka_unit_test(test_importance), cmocka_unit_test(test_mask_threshold),
        cmocka_unit_test(test_orth),        cmocka_unit_test(test_trainer_fd), cmocka_unit_test(test_train),
        cmocka_unit_test(test_resume),
    };
    return tu_run_tests("adalora", tests, NULL, NULL);
}
