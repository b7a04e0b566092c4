/* OFQ's quantization-aware training entries (src/train/adapter_ofq.c):
 * the grid and StatsQ's step against their formulas, the straight-through
 * gradients against their definitions (StatsQ: dWq passed to every weight;
 * LSQ: masked outside the clipping range, the step's gradient Esser et
 * al.'s), CGA's freezing against its rule, the oscillation counter on a
 * hand-made sequence, and the written packed model against the trainer's
 * fake-quant forward (and after a save and reload). */
#include "test_util.h"
#include "train/adapter.h"
#include "train/ofq.h"
#include "train/train.h"
#include "wop/qstore.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

static void test_grid_and_statsq(void **state)
{
    (void)state;
    /* levels: round, then clamp to [-2^(b-1), 2^(b-1) - 1] */
    assert_int_equal(wmat__ofq_level(0.49f, 1.0f, 2), 0);
    assert_int_equal(wmat__ofq_level(0.51f, 1.0f, 2), 1);
    assert_int_equal(wmat__ofq_level(7.0f, 1.0f, 2), 1);
    assert_int_equal(wmat__ofq_level(-7.0f, 1.0f, 2), -2);
    assert_int_equal(wmat__ofq_level(-7.0f, 1.0f, 4), -7);
    assert_int_equal(wmat__ofq_level(100.0f, 1.0f, 4), 7);
    assert_int_equal(wmat__ofq_level(-100.0f, 1.0f, 4), -8);
    /* StatsQ: f16(2 mean|w| / 2^(b-1)) */
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    float w[96];
    double s = 0;
    for (int i = 0; i < 96; i++) {
        w[i] = 0.05f * wmat_rng_normal(&r);
        s += fabs((double)w[i]);
    }
    for (int b = 2; b <= 8; b++) {
        const float want = f16r((float)(2.0 * s / 96.0 / (double)(1 << (b - 1))));
        assert_true(wmat__ofq_statsq_step(w, 96, b) == want);
    }
    /* LSQ's init: 2 mean|w| / sqrt(Qp) */
    assert_true(fabsf(wmat__ofq_lsq_init(w, 96, 4) - (float)(2.0 * s / 96.0 / sqrt(7.0))) < 1e-7f);
    assert_true(wmat__ofq_step16(-1.0f) > 0.0f); /* a learned step never reaches 0 */
}

/* A layer of the entry `name` with in = 64, out = 8, groups of 32. */
typedef struct {
    const wmat__adapter *a;
    wmat__adapter_cfg c;
    int in, out, BT;
    float *w[2], *dw[2], *X, *dY, *Y, *dX, *scratch;
    void *fixed;
} layer;

static void layer_make(layer *L, const char *name, int bits, int group, int cga_steps, int steps, uint64_t seed)
{
    memset(L, 0, sizeof *L);
    L->a = wmat__adapter_find(name);
    assert_non_null(L->a);
    L->in = 64, L->out = 8, L->BT = 5;
    L->c.nt = 1;
    L->c.steps = steps;
    L->c.qat.bits = bits;
    L->c.qat.group = group;
    L->c.qat.cga_steps = cga_steps;
    L->c.qat.cga_range = 0.05f;
    TU_OK(L->a->check(&L->c, NULL, L->in, L->out, "test"));
    int rows[2], cols[2];
    L->a->shapes(&L->c, L->in, L->out, rows, cols);
    for (int k = 0; k < L->a->n_tensors; k++) {
        L->w[k] = calloc(wmat__adapter_nelem(rows[k], cols[k]), sizeof(float));
        L->dw[k] = calloc(wmat__adapter_nelem(rows[k], cols[k]), sizeof(float));
    }
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    const int n = L->in * L->out;
    float *W = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) W[i] = 0.1f * wmat_rng_normal(&r);
    L->fixed = calloc(L->a->fixed_bytes(&L->c, L->in, L->out), 1);
    TU_OK(L->a->init(&L->c, L->w, L->fixed, NULL, W, L->in, L->out, &r));
    assert_memory_equal(L->w[0], W, n * sizeof(float)); /* starts from the model's weight */
    free(W);
    L->X = malloc(sizeof(float) * L->BT * L->in);
    L->dY = malloc(sizeof(float) * L->BT * L->out);
    L->Y = calloc((size_t)L->BT * L->out, sizeof(float));
    L->dX = calloc((size_t)L->BT * L->in, sizeof(float));
    for (int i = 0; i < L->BT * L->in; i++) L->X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < L->BT * L->out; i++) L->dY[i] = wmat_rng_normal(&r);
    L->scratch = calloc(L->a->scratch_floats(&L->c, L->BT, L->in, L->out) + 1, sizeof(float));
}

static void layer_free(layer *L)
{
    for (int k = 0; k < 2; k++) free(L->w[k]), free(L->dw[k]);
    free(L->X), free(L->dY), free(L->Y), free(L->dX), free(L->scratch), free(L->fixed);
}

/* The step of group g as the entry has it. */
static float step_of(const layer *L, int g)
{
    const int G = L->c.qat.group ? L->c.qat.group : L->in;
    if (L->a->n_tensors == 2) return wmat__ofq_step16(L->w[1][g]);
    return wmat__ofq_statsq_step(L->w[0] + (size_t)g * G, (size_t)G, L->c.qat.bits);
}

/* Wq (out, in) from the formula */
static void wq_ref(const layer *L, double *Wq)
{
    const int G = L->c.qat.group ? L->c.qat.group : L->in;
    for (int i = 0; i < L->in * L->out; i++) {
        const float d = step_of(L, i / G);
        Wq[i] = (double)d * wmat__ofq_level(L->w[0][i], d, L->c.qat.bits);
    }
}

static void check_forward_and_dx(layer *L)
{
    double *Wq = malloc(sizeof(double) * L->in * L->out);
    wq_ref(L, Wq);
    L->a->forward(&L->c, L->Y, NULL, L->scratch, L->X, (const float *const *)L->w, L->fixed, NULL, L->BT, L->in, L->out);
    for (int t = 0; t < L->BT; t++)
        for (int o = 0; o < L->out; o++) {
            double y = 0;
            for (int i = 0; i < L->in; i++) y += (double)L->X[t * L->in + i] * Wq[o * L->in + i];
            assert_true(fabs(L->Y[t * L->out + o] - y) <= 1e-5 * (1 + fabs(y)));
        }
    for (int t = 0; t < L->BT; t++)
        for (int i = 0; i < L->in; i++) {
            double dx = 0;
            for (int o = 0; o < L->out; o++) dx += (double)L->dY[t * L->out + o] * Wq[o * L->in + i];
            assert_true(fabs(L->dX[t * L->in + i] - dx) <= 1e-5 * (1 + fabs(dx)));
        }
    free(Wq);
}

/* dWq = dY^T X, the gradient of the fake-quant weight */
static double dwq(const layer *L, int o, int i)
{
    double g = 0;
    for (int t = 0; t < L->BT; t++) g += (double)L->dY[t * L->out + o] * L->X[t * L->in + i];
    return g;
}

static void test_ste_statsq(void **state)
{
    (void)state;
    for (int b = 2; b <= 4; b++)
        for (int group = 0; group <= 32; group += 32) {
            layer L;
            layer_make(&L, "ofq-statsq", b, group, 0, 10, 11 + b);
            L.a->backward(&L.c, L.dX, L.dw, L.scratch, L.dY, L.X, (const float *const *)L.w, L.fixed, NULL, NULL, L.BT,
                          L.in, L.out);
            check_forward_and_dx(&L);
            /* straight through: every latent weight gets dWq, clipped or not */
            for (int o = 0; o < L.out; o++)
                for (int i = 0; i < L.in; i++) {
                    const double g = dwq(&L, o, i);
                    assert_true(fabs(L.dw[0][o * L.in + i] - g) <= 1e-5 * (1 + fabs(g)));
                }
            layer_free(&L);
        }
}

static void test_ste_lsq(void **state)
{
    (void)state;
    for (int b = 2; b <= 4; b++) {
        layer L;
        layer_make(&L, "ofq-lsq", b, 32, 0, 10, 21 + b);
        const int G = 32, lo = -(1 << (b - 1)), hi = (1 << (b - 1)) - 1;
        /* shrink some steps so weights fall outside the clipping range */
        L.w[1][0] *= 0.3f;
        L.w[1][3] *= 0.2f;
        L.a->backward(&L.c, L.dX, L.dw, L.scratch, L.dY, L.X, (const float *const *)L.w, L.fixed, NULL, NULL, L.BT, L.in,
                      L.out);
        check_forward_and_dx(&L);
        int clipped = 0;
        for (int g = 0; g < L.out * L.in / G; g++) {
            const float d = step_of(&L, g);
            double sg = 0;
            for (int j = 0; j < G; j++) {
                const int idx = g * G + j, o = idx / L.in, i = idx % L.in;
                const double v = (double)L.w[0][idx] / d, gq = dwq(&L, o, i);
                const int q = wmat__ofq_level(L.w[0][idx], d, b), inside = v >= lo && v <= hi;
                clipped += !inside;
                /* the weight: 1 inside the clipping range, 0 outside */
                const double want = inside ? gq : 0.0;
                assert_true(fabs(L.dw[0][idx] - want) <= 1e-5 * (1 + fabs(want)));
                /* d(d q)/dd = q - v inside (round's gradient taken as 1), q outside */
                sg += gq * (inside ? q - v : q);
            }
            const double want = sg / sqrt((double)hi * G);
            assert_true(fabs(L.dw[1][g] - want) <= 1e-4 * (1 + fabs(want)));
        }
        assert_true(clipped > 0);
        layer_free(&L);
    }
}

/* CGA: in the annealing stage the gradient reaches only the weights its
 * rule keeps (within the range of a boundary between two levels), and
 * after the optimizer step every other weight has its value back. */
static void test_cga_freezes_by_rule(void **state)
{
    (void)state;
    const int b = 3, steps = 10;
    layer L;
    layer_make(&L, "ofq", b, 0, steps, steps, 31); /* the whole run anneals */
    const int n = L.in * L.out, G = L.in;
    /* put a few weights of every row near a boundary (the step depends on
     * them: repeated until it stops moving) */
    for (int it = 0; it < 20; it++)
        for (int o = 0; o < L.out; o++) {
            const float d = step_of(&L, o);
            L.w[0][o * L.in + 1] = d * 0.52f;  /* 0.02 levels from the boundary at 0.5: trains */
            L.w[0][o * L.in + 2] = -d * 1.46f; /* 0.04 from -1.5: trains */
            L.w[0][o * L.in + 3] = d * 0.40f;  /* 0.10 from 0.5: frozen */
            L.w[0][o * L.in + 4] = d * 3.52f;  /* beyond the last boundary (2.5): frozen */
        }
    /* the stored copy is what the rule reads after the step: start it here */
    float *W0 = malloc(n * sizeof(float));
    memcpy(W0, L.w[0], n * sizeof(float));
    wmat_rng r0;
    wmat_rng_seed(&r0, 1);
    TU_OK(L.a->init(&L.c, L.w, L.fixed, NULL, W0, L.in, L.out, &r0));
    free(W0);
    L.a->backward(&L.c, L.dX, L.dw, L.scratch, L.dY, L.X, (const float *const *)L.w, L.fixed, NULL, NULL, L.BT, L.in,
                  L.out);
    float *before = malloc(n * sizeof(float));
    memcpy(before, L.w[0], n * sizeof(float));
    int trains = 0;
    for (int idx = 0; idx < n; idx++) {
        const int o = idx / L.in, i = idx % L.in;
        const float d = wmat__ofq_statsq_step(before + (size_t)o * G, (size_t)G, b);
        /* the rule, written out: distance to the nearest boundary i + 1/2 in [-4 + 1/2, 3 - 1/2] */
        const double v = (double)before[idx] / d;
        int rule = 0;
        for (int k = -4; k <= 2; k++) rule |= fabs(v - (k + 0.5)) <= 0.05;
        assert_int_equal(rule, wmat__ofq_cga_trains(before[idx], d, b, 0.05f));
        if (i >= 1 && i <= 4) assert_int_equal(rule, i <= 2);
        trains += rule;
        const double want = rule ? dwq(&L, o, i) : 0.0;
        assert_true(fabs(L.dw[0][idx] - want) <= 1e-5 * (1 + fabs(want)));
    }
    assert_true(trains >= 2 * L.out && trains < n / 2);
    /* an optimizer step moves every weight; after_step puts the frozen back */
    for (int idx = 0; idx < n; idx++) L.w[0][idx] += 1e-3f;
    wmat__adapter_layer al = {&L.c, L.w, L.dw, L.fixed, 0, 0, L.in, L.out};
    TU_OK(L.a->after_step(&L.c, &al, 1, 0, steps));
    for (int idx = 0; idx < n; idx++) {
        const int o = idx / L.in;
        const float d = wmat__ofq_statsq_step(before + (size_t)o * G, (size_t)G, b);
        const float want = wmat__ofq_cga_trains(before[idx], d, b, 0.05f) ? before[idx] + 1e-3f : before[idx];
        assert_true(L.w[0][idx] == want);
    }
    char buf[1024];
    L.a->status(&L.c, &al, 1, buf, sizeof buf);
    char expect[96];
    snprintf(expect, sizeof expect, "%d of %d weights frozen", n - trains, n);
    if (!strstr(buf, expect)) fail_msg("status does not say '%s':\n%s", expect, buf);
    /* the stage ends with the schedule: after the last step nothing is masked */
    TU_OK(L.a->after_step(&L.c, &al, 1, steps - 1, steps));
    memset(L.dw[0], 0, n * sizeof(float));
    L.a->backward(&L.c, NULL, L.dw, L.scratch, L.dY, L.X, (const float *const *)L.w, L.fixed, NULL, NULL, L.BT, L.in,
                  L.out);
    for (int idx = 0; idx < n; idx++) {
        const double g = dwq(&L, idx / L.in, idx % L.in);
        assert_true(fabs(L.dw[0][idx] - g) <= 1e-5 * (1 + fabs(g)));
    }
    free(before);
    layer_free(&L);
}

/* Three weights over four steps: w0 0 1 0 1 (oscillates at steps 2 and 3),
 * w1 0 1 2 1 (at step 3), w2 0 0 -1 -1 (never). */
static void test_oscillation_counter(void **state)
{
    (void)state;
    int8_t prev[3] = {0, 0, 0}, dir[3] = {0, 0, 0};
    uint8_t ever[3] = {0, 0, 0};
    const int8_t seq[3][3] = {{1, 1, 0}, {0, 2, -1}, {1, 1, -1}};
    const int64_t want[3] = {0, 1, 2};
    int64_t flips = 0;
    for (int s = 0; s < 3; s++) assert_int_equal(wmat__ofq_track(prev, dir, ever, seq[s], 3, &flips), want[s]);
    assert_int_equal(flips, 7);
    assert_int_equal(ever[0], 1);
    assert_int_equal(ever[1], 1);
    assert_int_equal(ever[2], 0);
    assert_memory_equal(prev, seq[2], 3);
}

/* A model whose linears all take multiples of 32 inputs. */
static wmat_model *model32(uint64_t seed)
{
    wmat_config c = tu_config(64, 96, 2, 4, 2, 40, 32);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.1f));
    return m;
}

/* The written model is the fake-quant forward: packed weights, logits equal
 * to the trainer's, before and after a save and reload. */
static void written_check(const char *name, int bits, int group)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = model32(7);
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.adapter = name;
    p.lora_targets = 0x7f;
    p.batch = 2;
    p.ctx = 16;
    p.steps = 6;
    p.lr = 1e-2f;
    p.qat_bits = bits;
    p.qat_group = group;
    p.qat_cga_steps = 3;
    const size_t nd = 600;
    int32_t *d = malloc(nd * sizeof(int32_t));
    for (size_t i = 0; i < nd; i++) d[i] = (int32_t)((i * i + 5 * i) % 11 + (i % 7)) % 40;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, nd));
    for (int s = 0; s < 6; s++) TU_OK(wmat_trainer_step(t, NULL));
    const char *rep = wmat_trainer_adapter_report(t);
    if (!strstr(rep, "oscillations")) fail_msg("%s: the report has no oscillation count:\n%s", name, rep);
    int32_t inp[16], tgt[16];
    for (int i = 0; i < 16; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 16, 1, 1, 1, &loss));
    const int V = 40;
    float *fq = malloc(sizeof(float) * 16 * V), *lg = malloc(sizeof(float) * 16 * V);
    memcpy(fq, wmat__trainer_logits(t), sizeof(float) * 16 * V);
    wmat_model *qm;
    TU_OK(wmat_trainer_model(t, &qm));
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const wmat_tensor *w = wmat_model_linear(qm, l, (wmat_linear_kind)k);
            assert_string_equal(wmat_tensor_kind(w), "qpacked");
            const wmat_qtensor *qt = wmat_tensor_qtensor(w);
            assert_non_null(qt);
            assert_int_equal(qt->bits, bits);
            assert_int_equal(qt->group, group ? group : (int)qt->cols);
        }
    for (int pass = 0; pass < 2; pass++) {
        wmat_model *mm = qm, *loaded = NULL;
        if (pass == 1) {
            /* written as a native directory and read back */
            const char *dir = tu_tmp("ofq_model");
            wmat_save_params sp = wmat_save_default_params();
            sp.format = WMAT_FMT_QUANT;
            TU_OK(wmat_model_save(qm, dir, &sp));
            wmat_load_params lp = wmat_load_default_params();
            lp.keep_stored = 1;
            TU_OK(wmat_model_load(&loaded, dir, &lp));
            mm = loaded;
        }
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.ctx = &oc;
        wmat_runtime *rt;
        TU_OK(wmat_runtime_create(&rt, mm, &rp));
        TU_OK(wmat_forward(rt, inp, 16, lg));
        if (pass == 1) {
            /* `wmat eval` on the written model: the trainer's last evaluation */
            wmat_eval_result ev, ev2;
            TU_OK(wmat_trainer_eval(t, d, 400, 16, 0, &ev));
            TU_OK(wmat_eval_tokens(rt, d, 400, 16, 0, &ev2));
            assert_int_equal(ev.tokens_scored, ev2.tokens_scored);
            if (!(fabs(ev.mean_nll - ev2.mean_nll) <= 1e-6 * (1 + fabs(ev.mean_nll))))
                fail_msg("%s: the written model's mean NLL %.9f, the trainer's %.9f", name, ev2.mean_nll, ev.mean_nll);
        }
        for (int i = 0; i < 16 * V; i++)
            if (!(fabsf(lg[i] - fq[i]) <= 1e-4f * (1 + fabsf(fq[i]))))
                fail_msg("%s %d bits (pass %d): packed vs fake-quant logit %d: %.7g vs %.7g", name, bits, pass, i, lg[i],
                         fq[i]);
        wmat_runtime_free(rt);
        wmat_model_free(loaded);
    }
    free(fq), free(lg), free(d);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

static void test_written_model(void **state)
{
    (void)state;
    written_check("ofq", 2, 0);
    written_check("ofq-statsq", 3, 32);
    written_check("ofq-lsq", 4, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_and_statsq),
        cmocka_unit_test(test_ste_statsq),
        cmocka_unit_test(test_ste_lsq),
        cmocka_unit_test(test_cga_freezes_by_rule),
        cmocka_unit_test(test_oscillation_counter),
        cmocka_unit_test(test_written_model),
    };
    return tu_run_tests("ofq", tests, NULL, NULL);
}
