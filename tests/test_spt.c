/* SPT (src/train/adapter_spt.c) beyond what tests/test_train_registry.c
 * checks of every adapter (its kernels against finite differences, the loss
 * falls, merged logits = base + adapter):
 *
 * - allocation: the selected positions are the top tau of all matrices'
 *   sensitivities (against a sort: value descending, ties to the lower
 *   matrix and position), on keys with many ties, for several budgets and
 *   thresholds; a matrix with count >= threshold x (in + out) gets LoRA of
 *   rank clamp(floor(count / (in + out)), 1, min(in, out)), the others
 *   their count as sparse positions; the cost is at most the budget, short
 *   of it by less than the widest in + out, and one more position would
 *   exceed it;
 * - sensitivity: the sum over calibration batches of the squared gradient
 *   of each batch's mean loss, against wmat_model_weight_gradients per batch;
 * - the trainer on a tiny model: each layer's rank and trained-float count
 *   follow the rule applied to independently computed sensitivities; the
 *   trained floats equal the budget within rounding; at the start (B = 0,
 *   values 0) the sparse values' gradient is full fine-tuning's gradient at
 *   the selected positions and LoRA's dB = s G A^T (G full fine-tuning's
 *   gradient); every trainable float against central differences; after
 *   training, the merged model differs from the base only at the selected
 *   positions (by the values) and by s B A on the LoRA layers; a run resumed
 *   from a checkpoint ends with the same checkpoint bytes. */
#include "train_util.h"
#include "train/adapter.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ reference */

typedef struct {
    float v;
    size_t g;
} gv;

static int gv_cmp(const void *a, const void *b)
{
    const gv *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return (x->g > y->g) - (x->g < y->g);
}

/* per matrix: how many of the top tau (value descending, ties: lower global index) */
static void ref_counts(const float *const *s, const int *in, const int *out, int nm, size_t tau, int64_t *cnt)
{
    size_t N = 0;
    for (int j = 0; j < nm; j++) N += (size_t)in[j] * out[j];
    gv *a = malloc((N + 1) * sizeof *a);
    size_t *start = malloc(((size_t)nm + 1) * sizeof *start);
    size_t o = 0;
    for (int j = 0; j < nm; j++) {
        start[j] = o;
        for (size_t i = 0; i < (size_t)in[j] * out[j]; i++, o++) a[o] = (gv){s[j][i], o};
        cnt[j] = 0;
    }
    start[nm] = N;
    qsort(a, N, sizeof *a, gv_cmp);
    for (size_t q = 0; q < tau && q < N; q++) {
        int j = 0;
        while (a[q].g >= start[j + 1]) j++;
        cnt[j]++;
    }
    free(a), free(start);
}

/* the rule, written out again */
static int64_t ref_cost(int64_t c, int in, int out, float thr, int *rank)
{
    const int64_t io = in + out;
    if (c > 0 && (double)c >= (double)thr * (double)io) {
        int64_t r = c / io;
        r = r < 1 ? 1 : r;
        r = r > (in < out ? in : out) ? (in < out ? in : out) : r;
        *rank = (int)r;
        return r * io;
    }
    *rank = 0;
    return c;
}

/* the layer's top k positions (value descending, ties: lower index), as flags */
static unsigned char *top_flags(const float *s, size_t n, size_t k)
{
    gv *a = malloc((n + 1) * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = (gv){s[i], i};
    qsort(a, n, sizeof *a, gv_cmp);
    unsigned char *f = calloc(n + 1, 1);
    for (size_t q = 0; q < k && q < n; q++) f[a[q].g] = 1;
    free(a);
    return f;
}

/* ------------------------------------------------------------ allocation */

static void test_allocate(void **state)
{
    (void)state;
    enum { nm = 4 };
    const int in[nm] = {12, 8, 20, 5}, out[nm] = {8, 16, 6, 3};
    float *s[nm];
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    size_t N = 0;
    int max_io = 0;
    for (int j = 0; j < nm; j++) {
        const size_t n = (size_t)in[j] * out[j];
        N += n;
        max_io = in[j] + out[j] > max_io ? in[j] + out[j] : max_io;
        s[j] = malloc(n * sizeof(float));
        /* 10 values (ties), matrix 1 the most sensitive on average */
        for (size_t i = 0; i < n; i++) s[j][i] = (float)(int)(wmat_rng_uniform(&r) * 10.0f) + (j == 1 ? 3.0f : 0.0f);
    }
    const float thr[] = {0.5f, 1.0f, 2.5f, 1e9f, 0.0f};
    const double budgets[] = {1, 7, 30, 55, 100, 180, 333, 600, 1e6};
    int saw_lora = 0, saw_sparse = 0, saw_both = 0;
    for (size_t ti = 0; ti < sizeof thr / sizeof thr[0]; ti++)
        for (size_t bi = 0; bi < sizeof budgets / sizeof budgets[0]; bi++) {
            int64_t cnt[nm], ref[nm], tau;
            int rank[nm];
            double total;
            TU_OK(wmat__spt_allocate((const float *const *)s, in, out, nm, budgets[bi], thr[ti], cnt, rank, &tau, &total));
            ref_counts((const float *const *)s, in, out, nm, (size_t)tau, ref);
            int64_t cost = 0;
            int nl = 0, ns = 0;
            for (int j = 0; j < nm; j++) {
                int rr;
                assert_int_equal(cnt[j], ref[j]);
                cost += ref_cost(ref[j], in[j], out[j], thr[ti], &rr);
                assert_int_equal(rank[j], rr);
                nl += rr > 0, ns += rr == 0 && ref[j] > 0;
            }
            assert_true((double)cost == total);
            assert_true(total <= budgets[bi]);
            saw_lora |= nl > 0, saw_sparse |= ns > 0, saw_both |= nl > 0 && ns > 0;
            if ((size_t)tau < N) {
                /* one more position would exceed the budget; the shortfall is under one rank's floats */
                int64_t c1[nm], cost1 = 0;
                ref_counts((const float *const *)s, in, out, nm, (size_t)tau + 1, c1);
                for (int j = 0; j < nm; j++) {
                    int rr;
                    cost1 += ref_cost(c1[j], in[j], out[j], thr[ti], &rr);
                }
                if (!((double)cost1 > budgets[bi]))
                    fail_msg("thr %g budget %g: tau %lld not maximal (%lld <= budget)", (double)thr[ti], budgets[bi],
                             (long long)tau, (long long)cost1);
                assert_true(budgets[bi] - total < max_io);
            } else {
                assert_int_equal(tau, (int64_t)N);
            }
        }
    assert_true(saw_lora && saw_sparse && saw_both);
    for (int j = 0; j < nm; j++) free(s[j]);
}

/* ------------------------------------------------------------ sensitivity */

static int tensor_index(wmat_model *m, const wmat_tensor *t)
{
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (wmat_model_tensor(m, i) == t) return i;
    return -1;
}

/* sum over nb batches of B windows of ctx of the squared gradient of linear (l, k) */
static float *ref_sens(wmat_model *m, const int32_t *d, size_t n, int ctx, int B, int nb, int l, int k)
{
    const wmat_tensor *W = wmat_model_linear(m, l, (wmat_linear_kind)k);
    const size_t ne = (size_t)wmat_tensor_nelem(W);
    const int ti = tensor_index(m, W);
    float *s = calloc(ne, sizeof(float));
    for (int b = 0; b < nb; b++) {
        float **g;
        double loss;
        const size_t o = (size_t)b * B * ctx;
        TU_OK(wmat_model_weight_gradients(m, d + o, n - o, ctx, B, 1, &g, &loss));
        for (size_t e = 0; e < ne; e++) s[e] += g[ti][e] * g[ti][e];
        wmat_model_weight_gradients_free(m, g);
    }
    return s;
}

static void test_sensitivity(void **state)
{
    (void)state;
    wmat_model *m = tu_tiny_model(5, 16, 24, 2);
    int32_t *d = tu_pattern_tokens(300);
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    const int ml[3] = {0, 1, 1}, mk[3] = {WMAT_LIN_Q, WMAT_LIN_O, WMAT_LIN_DOWN};
    float *s[3];
    for (int j = 0; j < 3; j++) {
        const wmat_tensor *W = wmat_model_linear(m, ml[j], (wmat_linear_kind)mk[j]);
        s[j] = calloc((size_t)wmat_tensor_nelem(W), sizeof(float));
    }
    int used = 0;
    TU_OK(wmat__spt_sensitivity(m, d, 300, 8, 2, 3, &oc, ml, mk, 3, s, &used));
    assert_int_equal(used, 3);
    for (int j = 0; j < 3; j++) {
        float *ref = ref_sens(m, d, 300, 8, 2, 3, ml[j], mk[j]);
        const size_t ne = (size_t)wmat_tensor_nelem(wmat_model_linear(m, ml[j], (wmat_linear_kind)mk[j]));
        double mx = 0;
        for (size_t e = 0; e < ne; e++) {
            mx = fmax(mx, ref[e]);
            if (!(fabsf(s[j][e] - ref[e]) <= 1e-6f * fabsf(ref[e]) + 1e-30f))
                fail_msg("matrix %d position %zu: %.9g vs %.9g", j, e, s[j][e], ref[e]);
        }
        assert_true(mx > 0);
        free(ref), free(s[j]);
    }
    /* no calibration data: refused */
    float *one = calloc(16 * 16, sizeof(float));
    assert_int_not_equal(wmat__spt_sensitivity(m, d, 8, 8, 2, 3, &oc, ml, mk, 1, &one, &used), WMAT_OK);
    free(one);
    free(d);
    wmat_model_free(m);
}

/* ------------------------------------------------------------ trainer */

enum { TL = 2, TDIM = 16, THID = 24, TN = 600 };

static wmat_train_params sparams(wmat_context *oc, const int32_t *d, float thr)
{
    wmat_train_params p = tu_adapter_params(oc, "spt", 2);
    p.adapter_calib = d;
    p.adapter_calib_n = TN;
    p.spt_threshold = thr;
    p.steps = 20;
    return p;
}

typedef struct {
    int nm, ml[TL * WMAT_LIN_COUNT], mk[TL * WMAT_LIN_COUNT], in[TL * WMAT_LIN_COUNT], out[TL * WMAT_LIN_COUNT];
    float *s[TL * WMAT_LIN_COUNT];
    int64_t cnt[TL * WMAT_LIN_COUNT];
    int rank[TL * WMAT_LIN_COUNT];
    double budget, total;
} expect;

/* the plan's outcome from sensitivities computed apart (8 batches of 2 x 8) */
static void expected(wmat_model *m, const int32_t *d, float thr, expect *e)
{
    e->nm = 0;
    e->budget = 0;
    for (int l = 0; l < TL; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const int j = e->nm++;
            e->ml[j] = l, e->mk[j] = k;
            const wmat_tensor *W = wmat_model_linear(m, l, (wmat_linear_kind)k);
            e->out[j] = (int)W->shape[0], e->in[j] = (int)W->shape[1];
            e->s[j] = ref_sens(m, d, TN, 8, 2, 8, l, k);
            e->budget += 2.0 * (e->in[j] + e->out[j]); /* LoRA r2 */
        }
    /* the allocation (its rule is test_allocate's); its counts against the sort */
    int64_t tau;
    TU_OK(wmat__spt_allocate((const float *const *)e->s, e->in, e->out, e->nm, e->budget, thr, e->cnt, e->rank, &tau,
                             &e->total));
    int64_t ref[TL * WMAT_LIN_COUNT];
    ref_counts((const float *const *)e->s, e->in, e->out, e->nm, (size_t)tau, ref);
    for (int j = 0; j < e->nm; j++) assert_int_equal(ref[j], e->cnt[j]);
}

static void free_expect(expect *e)
{
    for (int j = 0; j < e->nm; j++) free(e->s[j]);
}

/* Every trainable float against central differences of the trainer's loss
 * (two windows of 8), tu_trainer_fd_check's rule with h = 2e-3: a LoRA B at
 * scale 4 on a tiny model's k moves the loss with enough curvature that
 * h = 1e-2 is off by 0.6% (the difference converges to the analytic value
 * as h shrinks: 0.6937, 0.6897, 0.6893 at h = 1e-2, 3.3e-3, 1.1e-3 against
 * 0.6892), while float rounding of the loss stays far below 2e-3 max|fd|. */
static void fd_check(wmat_trainer *t, float thr)
{
    char who[32];
    snprintf(who, sizeof who, "spt thr %g", (double)thr);
    tu_trainer_fd_check_h(t, who, 2e-3f);
}

static void test_trainer(void **state)
{
    (void)state;
    int kinds_lora = 0, kinds_sparse = 0;
    const float thrs[] = {1.0f, 3.0f};
    for (int ti = 0; ti < 2; ti++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tu_tiny_model(7, TDIM, THID, TL);
        int32_t *d = tu_pattern_tokens(TN);
        wmat_train_params p = sparams(&oc, d, thrs[ti]);
        expect e;
        expected(m, d, thrs[ti], &e);
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        print_message("thr %g: %s", (double)thrs[ti], wmat_trainer_adapter_report(t));
        size_t np;
        float *pp = wmat__trainer_params(t, &np);
        /* trained floats: the rule's total, the budget within rounding */
        int max_io = 0;
        for (int j = 0; j < e.nm; j++) max_io = e.in[j] + e.out[j] > max_io ? e.in[j] + e.out[j] : max_io;
        assert_true((double)np == e.total);
        assert_true(np <= e.budget && e.budget - np < max_io);
        for (int j = 0; j < e.nm; j++) {
            assert_int_equal(wmat_trainer_adapter_rank(t, e.ml[j], e.mk[j]), e.rank[j]);
            kinds_lora += e.rank[j] > 0;
            kinds_sparse += e.rank[j] == 0 && e.cnt[j] > 0;
        }
        /* at the start: gradients against full fine-tuning's on a batch */
        int32_t inp[16], tgt[16];
        for (int i = 0; i < 16; i++) inp[i] = d[i], tgt[i] = d[i + 1];
        double loss;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 0, &loss));
        float *g = wmat__trainer_grads(t, &np);
        float **G;
        double l2;
        TU_OK(wmat_model_weight_gradients(m, d, TN, 8, 2, 1, &G, &l2));
        assert_true(fabs(loss - l2) < 1e-6 * (1 + l2)); /* the adapted model starts as the base */
        size_t off = 0;
        for (int j = 0; j < e.nm; j++) {
            const int in = e.in[j], out = e.out[j], r = e.rank[j];
            const float *Gj = G[tensor_index(m, wmat_model_linear(m, e.ml[j], (wmat_linear_kind)e.mk[j]))];
            if (e.cnt[j] == 0) continue;
            if (r > 0) {
                /* dB (out x r) = s G A^T, s = alpha / --lora-rank = 8 / 2 */
                const float *A = pp + off, *dB = g + off + (size_t)r * in;
                for (int o = 0; o < out; o++)
                    for (int q = 0; q < r; q++) {
                        double x = 0, ax = 0;
                        for (int i = 0; i < in; i++)
                            x += (double)Gj[(size_t)o * in + i] * A[(size_t)q * in + i],
                                ax += fabs((double)Gj[(size_t)o * in + i] * A[(size_t)q * in + i]);
                        x *= 4.0, ax *= 4.0;
                        if (!(fabs(dB[(size_t)o * r + q] - x) <= 1e-5 * ax + 1e-9))
                            fail_msg("matrix %d dB[%d,%d] %.8g vs s G A^T %.8g", j, o, q, dB[(size_t)o * r + q], x);
                    }
                off += (size_t)r * (in + out);
            } else {
                unsigned char *f = top_flags(e.s[j], (size_t)in * out, (size_t)e.cnt[j]);
                size_t v = 0;
                double gm = 0;
                for (size_t p2 = 0; p2 < (size_t)in * out; p2++) gm = fmax(gm, fabs(Gj[p2]));
                for (size_t p2 = 0; p2 < (size_t)in * out; p2++)
                    if (f[p2]) {
                        if (!(fabs(g[off + v] - Gj[p2]) <= 1e-5 * gm + 1e-9))
                            fail_msg("matrix %d position %zu: value gradient %.8g vs full %.8g", j, p2, g[off + v], Gj[p2]);
                        v++;
                    }
                assert_int_equal(v, e.cnt[j]);
                free(f);
                off += v;
            }
        }
        assert_int_equal(off, np);
        wmat_model_weight_gradients_free(m, G);
        fd_check(t, thrs[ti]);
        /* train; the merged model is the base plus exactly the update */
        TU_OK(wmat_trainer_set_data(t, d, TN));
        double first = 0, last = 0;
        for (int s = 0; s < p.steps; s++) {
            wmat_train_step_info info;
            TU_OK(wmat_trainer_step(t, &info));
            if (s == 0) first = info.loss;
            last = info.loss;
        }
        assert_true(last < first);
        wmat_model *mm;
        TU_OK(wmat_trainer_model(t, &mm));
        pp = wmat__trainer_params(t, &np);
        off = 0;
        for (int j = 0; j < e.nm; j++) {
            const int in = e.in[j], out = e.out[j], r = e.rank[j];
            const wmat_tensor *ta = wmat_model_linear(m, e.ml[j], (wmat_linear_kind)e.mk[j]);
            const float *W = ta->data, *Wm = wmat_model_find(mm, ta->name)->data;
            if (e.cnt[j] == 0) {
                assert_memory_equal(W, Wm, (size_t)in * out * sizeof(float));
            } else if (r > 0) {
                const float *A = pp + off, *B = A + (size_t)r * in;
                for (int o = 0; o < out; o++)
                    for (int i = 0; i < in; i++) {
                        double x = W[(size_t)o * in + i];
                        for (int q = 0; q < r; q++) x += 4.0 * B[(size_t)o * r + q] * A[(size_t)q * in + i];
                        if (!(fabs(Wm[(size_t)o * in + i] - x) <= 1e-5 * (1 + fabs(x))))
                            fail_msg("matrix %d [%d,%d]: merged %.8g vs W + s B A %.8g", j, o, i, Wm[(size_t)o * in + i], x);
                    }
                off += (size_t)r * (in + out);
            } else {
                unsigned char *f = top_flags(e.s[j], (size_t)in * out, (size_t)e.cnt[j]);
                size_t v = 0, moved = 0;
                for (size_t q = 0; q < (size_t)in * out; q++) {
                    if (f[q]) {
                        assert_true(Wm[q] == W[q] + pp[off + v]);
                        moved += Wm[q] != W[q];
                        v++;
                    } else if (Wm[q] != W[q]) {
                        fail_msg("matrix %d position %zu moved, not selected", j, q);
                    }
                }
                assert_true(moved > 0);
                free(f);
                off += v;
            }
        }
        assert_int_equal(off, np);
        wmat_trainer_free(t);
        free_expect(&e);
        wmat_model_free(m);
        free(d);
    }
    /* both granularities occurred over the two thresholds */
    assert_true(kinds_lora > 0 && kinds_sparse > 0);
}

static void test_resume(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tu_tiny_model(11, TDIM, THID, TL);
    int32_t *d = tu_pattern_tokens(TN);
    wmat_train_params p = sparams(&oc, d, 1.0f);
    wmat_trainer *t, *u, *v;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, TN));
    for (int i = 0; i < p.steps; i++) TU_OK(wmat_trainer_step(t, NULL));
    TU_OK(wmat_trainer_create(&u, m, &p));
    TU_OK(wmat_trainer_set_data(u, d, TN));
    for (int i = 0; i < 7; i++) TU_OK(wmat_trainer_step(u, NULL));
    TU_OK(wmat_trainer_save_checkpoint(u, tu_tmp("spt_part.ckpt")));
    wmat_trainer_free(u);
    TU_OK(wmat_trainer_create(&v, m, &p));
    TU_OK(wmat_trainer_set_data(v, d, TN));
    TU_OK(wmat_trainer_load_checkpoint(v, tu_tmp("spt_part.ckpt")));
    for (int i = 7; i < p.steps; i++) TU_OK(wmat_trainer_step(v, NULL));
    TU_OK(wmat_trainer_save_checkpoint(t, tu_tmp("spt_full.ckpt")));
    TU_OK(wmat_trainer_save_checkpoint(v, tu_tmp("spt_resumed.ckpt")));
    size_t na, nb;
    unsigned char *a = tu_slurp(tu_tmp("spt_full.ckpt"), &na), *b = tu_slurp(tu_tmp("spt_resumed.ckpt"), &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a), free(b);
    wmat_trainer_free(t);
    wmat_trainer_free(v);
    /* no calibration tokens: refused with a message */
    p.adapter_calib = NULL;
    p.adapter_calib_n = 0;
    assert_int_not_equal(wmat_trainer_create(&t, m, &p), WMAT_OK);
    assert_non_null(strstr(wmat_last_error(), "calibration"));
    wmat_model_free(m);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocate),
        cmocka_unit_test(test_sensitivity),
        cmocka_unit_test(test_trainer),
        cmocka_unit_test(test_resume),
    };
    return tu_run_tests("spt", tests, NULL, NULL);
}
