/* Weight matching (src/merge/align.c, lap.c): the assignment solver against
 * brute force over every permutation (n <= 7) on random, tied and
 * degenerate matrices; a randomly permuted model computes the same logits
 * (a small random GQA model always, stories260K when ../shared/data has it,
 * and after a round trip through the HF and GGUF writers, whose q/k row
 * orders differ inside heads); breaking one part of the permutation changes
 * the logits (so the check can fail); matching a permuted copy back to its
 * original recovers the exact weights; the interpolation path's end points;
 * the singular-subspace overlap; refusals of mismatched models; the CLI. */
#include "test_util.h"
#include "merge/align.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- LAP */

/* max over all permutations by Heap's algorithm */
static double brute_max(const double *C, int n)
{
    int p[8], c[8] = {0};
    for (int i = 0; i < n; i++) p[i] = i;
    double best = 0;
    for (int i = 0; i < n; i++) best += C[i * n + p[i]];
    int i = 1;
    while (i < n) {
        if (c[i] < i) {
            const int k = (i % 2) ? c[i] : 0, t = p[k];
            p[k] = p[i];
            p[i] = t;
            double v = 0;
            for (int r = 0; r < n; r++) v += C[r * n + p[r]];
            if (v > best) best = v;
            c[i]++;
            i = 1;
        } else {
            c[i++] = 0;
        }
    }
    return best;
}

static void check_lap(const double *C, int n, const char *what)
{
    int perm[64], seen[64] = {0};
    double val = NAN;
    TU_OK(wmat__lap_max(C, n, perm, &val, NULL));
    double sum = 0, scale = 1;
    for (int i = 0; i < n; i++) {
        assert_true(perm[i] >= 0 && perm[i] < n);
        assert_int_equal(seen[perm[i]], 0);
        seen[perm[i]] = 1;
        sum += C[i * n + perm[i]];
    }
    for (int k = 0; k < n * n; k++) scale += fabs(C[k]);
    const double best = brute_max(C, n);
    if (!tu_near(val, best, 1e-12 * scale) || !tu_near(sum, val, 1e-12 * scale))
        fail_msg("%s, n %d: lap %.17g (its permutation sums to %.17g), brute force %.17g", what, n, val, sum, best);
}

static void test_lap_brute_force(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    double C[49];
    int cases = 0;
    for (int n = 1; n <= 7; n++) {
        for (int rep = 0; rep < 12; rep++) {
            for (int k = 0; k < n * n; k++) C[k] = wmat_rng_normal(&r);
            check_lap(C, n, "normal");
            for (int k = 0; k < n * n; k++) C[k] = (double)(wmat_rng_u64(&r) % 3); /* many ties */
            check_lap(C, n, "values 0..2");
            for (int k = 0; k < n * n; k++) C[k] = -1e6 * (double)(wmat_rng_u64(&r) % 2); /* large, negative */
            check_lap(C, n, "0 or -1e6");
            double u[7], v[7];
            for (int i = 0; i < n; i++) {
                u[i] = wmat_rng_normal(&r);
                v[i] = wmat_rng_normal(&r);
            }
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) C[i * n + j] = u[i] * v[j]; /* rank one */
            check_lap(C, n, "rank one");
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) C[i * n + j] = u[i] + v[j]; /* every permutation ties */
            check_lap(C, n, "u_i + v_j");
            cases += 5;
        }
        for (int k = 0; k < n * n; k++) C[k] = 0;
        check_lap(C, n, "zeros");
        for (int i = 0; i < n; i++) /* identical rows */
            for (int j = 0; j < n; j++) C[i * n + j] = (double)j * j;
        check_lap(C, n, "identical rows");
        for (int i = 0; i < n; i++) /* one column dominates every row */
            for (int j = 0; j < n; j++) C[i * n + j] = j == 0 ? 100.0 + i : (double)(i * j % 5);
        check_lap(C, n, "dominant column");
        cases += 3;
    }
    print_message("lap: %d matrices, n = 1..7, each equal to the brute-force maximum\n", cases);
    int dummy;
    double v = -1;
    TU_OK(wmat__lap_max(NULL, 0, &dummy, &v, NULL));
    assert_true(v == 0);
}

/* a hidden permutation under noise: the solver finds it at n = 300 */
static void test_lap_planted(void **state)
{
    (void)state;
    const int n = 300;
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    double *C = malloc((size_t)n * n * sizeof *C);
    int *truth = malloc(n * sizeof *truth), *perm = malloc(n * sizeof *perm);
    for (int i = 0; i < n; i++) truth[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(wmat_rng_u64(&r) % (uint64_t)(i + 1)), t = truth[i];
        truth[i] = truth[j];
        truth[j] = t;
    }
    for (int k = 0; k < n * n; k++) C[k] = wmat_rng_uniform(&r);
    for (int i = 0; i < n; i++) C[i * n + truth[i]] = 2.0;
    void *ws = malloc(wmat__lap_ws_bytes(n));
    double val;
    TU_OK(wmat__lap_max(C, n, perm, &val, ws));
    for (int i = 0; i < n; i++) assert_int_equal(perm[i], truth[i]);
    TU_ASSERT_NEAR(val, 2.0 * n, 1e-9);
    C[7] = NAN;
    assert_int_equal(wmat__lap_max(C, n, perm, &val, ws), WMAT_ERR_NUMERIC);
    C[7] = INFINITY;
    assert_int_equal(wmat__lap_max(C, n, perm, &val, ws), WMAT_ERR_NUMERIC);
    free(ws);
    free(C);
    free(truth);
    free(perm);
}

/* ---------------------------------------------------------------- models */

/* A random model with GQA (4 query heads per KV head), random norm weights
 * (so a norm missed by P_res changes the function) and an untied or tied
 * classifier. */
static wmat_model *random_model(int tied, uint64_t seed)
{
    wmat_config c = tu_config(64, 96, 2, 8, 2, 80, 32);
    c.tied_embeddings = tied;
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.2f));
    wmat_rng r;
    wmat_rng_seed(&r, seed + 99);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim != 1) continue;
        float *x = t->data;
        for (int64_t k = 0; k < t->shape[0]; k++) x[k] = 0.5f + wmat_rng_uniform(&r);
    }
    return m;
}

static float *logits_of(wmat_model *m, const int32_t *tok, int T)
{
    const int V = wmat_model_config(m)->vocab_size;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    rp.kv_cache_len = 1;
    wmat_runtime *rt = NULL;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    float *lg = malloc((size_t)T * V * sizeof *lg);
    TU_OK(wmat_forward(rt, tok, T, lg));
    wmat_runtime_free(rt);
    return lg;
}

static void tokens(int32_t *tok, int T, int V, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < T; i++) tok[i] = (int32_t)(wmat_rng_u64(&r) % (uint64_t)V);
}

/* max |a - b| / max(1, max |b|) */
static double logit_err(const float *a, const float *b, size_t n)
{
    const double m = tu_max_abs(b, n);
    return tu_max_abs_diff(a, b, n, NULL) / (m > 1 ? m : 1);
}

/* pi(m) gives m's logits to 1e-5, and each way of breaking the
 * permutation (one norm left unpermuted, rows inside a q head permuted, a
 * value dim moved in v but not in o) moves them by far more. */
static void check_invariance(wmat_model *m, const char *what, uint64_t seed)
{
    const wmat_config *c = wmat_model_config(m);
    const int T = c->seq_len < 24 ? c->seq_len : 24;
    const size_t nl = (size_t)T * c->vocab_size;
    int32_t tok[32];
    tokens(tok, T, c->vocab_size, seed);
    float *ref = logits_of(m, tok, T);
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, c));
    wmat__align_perm_random(&p, seed);
    assert_false(wmat__align_perm_is_identity(&p));
    wmat_model *pm = NULL;
    TU_OK(wmat__align_apply(m, &p, &pm));
    double dist;
    TU_OK(wmat__align_distance(m, pm, &dist, NULL));
    assert_true(dist > 1.0); /* the weights did move */
    float *got = logits_of(pm, tok, T);
    const double err = logit_err(got, ref, nl);
    print_message("%s: %lld map entries moved, ||W - pi(W)|| %.3f, logits max rel diff %.3g\n", what,
                  (long long)wmat__align_perm_moved(&p), dist, err);
    TU_ASSERT_BELOW(err, 1e-5);
    free(got);

    /* negative controls: the check can fail */
    const int hd = c->dim / c->n_heads;
    float *x = wmat_model_layer_tensor(pm, 0, WMAT_W_FFN_NORM)->data; /* a norm not following P_res */
    float t0 = x[0];
    x[0] = x[1];
    x[1] = t0;
    got = logits_of(pm, tok, T);
    const double e1 = logit_err(got, ref, nl);
    free(got);
    x[1] = x[0];
    x[0] = t0;
    float *q = wmat_model_layer_tensor(pm, 0, WMAT_W_Q)->data; /* two rows inside a q head (RoPE pairs) */
    float *row = malloc((size_t)c->dim * sizeof *row);
    memcpy(row, q, (size_t)c->dim * sizeof *row);
    memcpy(q, q + (size_t)2 * c->dim, (size_t)c->dim * sizeof *row);
    memcpy(q + (size_t)2 * c->dim, row, (size_t)c->dim * sizeof *row);
    got = logits_of(pm, tok, T);
    const double e2 = logit_err(got, ref, nl);
    free(got);
    memcpy(q + (size_t)2 * c->dim, q, (size_t)c->dim * sizeof *row);
    memcpy(q, row, (size_t)c->dim * sizeof *row);
    float *v = wmat_model_layer_tensor(pm, 0, WMAT_W_V)->data; /* a value dim moved in v only */
    memcpy(row, v, (size_t)c->dim * sizeof *row);
    memcpy(v, v + (size_t)(hd - 1) * c->dim, (size_t)c->dim * sizeof *row);
    memcpy(v + (size_t)(hd - 1) * c->dim, row, (size_t)c->dim * sizeof *row);
    got = logits_of(pm, tok, T);
    const double e3 = logit_err(got, ref, nl);
    free(got);
    print_message("%s: broken permutations move the logits by %.3g (norm), %.3g (q rows in a head), %.3g (v without o)\n",
                  what, e1, e2, e3);
    assert_true(e1 > 1e-3 && e2 > 1e-3 && e3 > 1e-3);
    free(row);
    free(ref);
    wmat_model_free(pm);
    wmat__align_perm_free(&p);
}

static void test_permutation_invariance_random(void **state)
{
    (void)state;
    for (int tied = 0; tied <= 1; tied++) {
        wmat_model *m = random_model(tied, 3 + tied);
        check_invariance(m, tied ? "random GQA model, tied" : "random GQA model, untied", 17 + tied);
        wmat_model_free(m);
    }
}

static void test_permutation_invariance_stories260k(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.tokenizer_path = tu_data("models/tok512.bin");
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    check_invariance(m, "stories260K", 5);
    wmat_model_free(m);
}

/* The permuted model written as HF (q/k rows in HF's rotary order on disk),
 * GGUF and llama2.c and read back gives the same logits: heads move as
 * whole blocks, so the writers' reordering inside heads commutes with it. */
static void test_permuted_roundtrip_formats(void **state)
{
    (void)state;
    wmat_tokenizer *tok = NULL;
    TU_OK(wmat_tokenizer_bytes(&tok));
    wmat_config c2 = tu_config(64, 96, 2, 8, 2, wmat_tokenizer_vocab_size(tok), 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &c2));
    TU_OK(wmat_model_init_random(m, 8, 0.2f));
    wmat_model_set_tokenizer(m, tok);
    const int T = 20;
    int32_t ids[20];
    tokens(ids, T, c2.vocab_size, 3);
    float *ref = logits_of(m, ids, T);
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, &c2));
    wmat__align_perm_random(&p, 21);
    wmat_model *pm = NULL;
    TU_OK(wmat__align_apply(m, &p, &pm));
    const struct {
        wmat_format f;
        const char *name;
    } outs[] = {{WMAT_FMT_HF, "perm_hf"}, {WMAT_FMT_GGUF, "perm.gguf"}, {WMAT_FMT_LLAMA2C, "perm.bin"}};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
        wmat_save_params sp = wmat_save_default_params();
        sp.format = outs[i].f;
        const char *path = tu_tmp(outs[i].name);
        TU_OK(wmat_model_save(pm, path, &sp));
        wmat_load_params lp = wmat_load_default_params();
        lp.materialize_f32 = 1;
        wmat_model *back = NULL;
        TU_OK(wmat_model_load(&back, path, &lp));
        float *got = logits_of(back, ids, T);
        const double err = logit_err(got, ref, (size_t)T * c2.vocab_size);
        print_message("%s: logits of the permuted model read back, max rel diff %.3g\n", outs[i].name, err);
        TU_ASSERT_BELOW(err, 1e-5);
        free(got);
        wmat_model_free(back);
    }
    free(ref);
    wmat_model_free(pm);
    wmat_model_free(m);
    wmat__align_perm_free(&p);
}

typedef struct {
    int n;
    double dist[128];
} iter_log;

static void on_iter(void *user, const wmat_align_iter *it)
{
    iter_log *l = user;
    if (l->n < 128) l->dist[l->n++] = it->dist;
}

/* Matching pi(A) back to A recovers A's weights exactly, and the
 * objective never gets worse from one sweep to the next. */
static void check_recovers(wmat_model *A, const char *what, uint64_t seed)
{
    const wmat_config *c = wmat_model_config(A);
    wmat_align_perm p, found;
    TU_OK(wmat__align_perm_init(&p, c));
    wmat__align_perm_random(&p, seed);
    wmat_model *B = NULL, *back = NULL;
    TU_OK(wmat__align_apply(A, &p, &B));
    TU_OK(wmat__align_perm_init(&found, c));
    iter_log log = {0};
    wmat_align_params ap = wmat__align_default_params();
    ap.seed = seed;
    ap.on_iter = on_iter;
    ap.user = &log;
    wmat_align_report rep;
    TU_OK(wmat__align_match(A, B, &ap, &found, &rep));
    print_message("%s: %d groups, %d sweeps (converged %d), ||A - B|| %.4f -> %.4g, %.2f s\n", what, rep.groups, rep.iters,
                  rep.converged, rep.dist_before, rep.dist_after, rep.seconds);
    assert_true(rep.converged);
    assert_true(rep.dist_before > 1.0);
    assert_true(rep.dist_after == 0.0);
    for (int i = 1; i < log.n; i++) assert_true(log.dist[i] <= log.dist[i - 1] * (1 + 1e-12));
    TU_OK(wmat__align_apply(B, &found, &back));
    for (int i = 0; i < wmat_model_n_tensors(A); i++) {
        const wmat_tensor *a = wmat_model_tensor(A, i), *b = wmat_model_find(back, a->name);
        assert_non_null(b);
        assert_memory_equal(a->data, b->data, (size_t)wmat_tensor_nelem(a) * sizeof(float));
    }
    /* matching A to itself moves nothing */
    wmat_align_perm self;
    TU_OK(wmat__align_perm_init(&self, c));
    TU_OK(wmat__align_match(A, A, &ap, &self, &rep));
    assert_true(wmat__align_perm_is_identity(&self));
    assert_int_equal(rep.iters, 1);
    wmat__align_perm_free(&self);
    wmat_model_free(back);
    wmat_model_free(B);
    wmat__align_perm_free(&found);
    wmat__align_perm_free(&p);
}

static void test_match_recovers_random(void **state)
{
    (void)state;
    for (int tied = 0; tied <= 1; tied++) {
        wmat_model *A = random_model(tied, 30 + tied);
        check_recovers(A, tied ? "random model, tied" : "random model, untied", 40 + tied);
        wmat_model_free(A);
    }
}

static void test_match_recovers_stories260k(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.tokenizer_path = tu_data("models/tok512.bin");
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    check_recovers(m, "stories260K", 9);
    wmat_model_free(m);
}

/* Two unrelated random models: matching lowers the distance, the result
 * is a permutation of B (same logits), and the subspace overlap rises. */
static void test_match_unrelated(void **state)
{
    (void)state;
    wmat_model *A = random_model(0, 50), *B = random_model(0, 51), *pB = NULL;
    const wmat_config *c = wmat_model_config(A);
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, c));
    wmat_align_report rep;
    TU_OK(wmat__align_match(A, B, NULL, &p, &rep));
    TU_OK(wmat__align_apply(B, &p, &pB));
    double d;
    TU_OK(wmat__align_distance(A, pB, &d, NULL));
    TU_ASSERT_NEAR(d, rep.dist_after, 1e-9 * rep.dist_after);
    assert_true(rep.dist_after < rep.dist_before);
    /* ||A - pi(B)||^2 = ||A||^2 + ||B||^2 - 2 <A, pi(B)> */
    TU_ASSERT_NEAR(rep.dist_after * rep.dist_after,
                   rep.norm_a * rep.norm_a + rep.norm_b * rep.norm_b - 2 * rep.inner_after, 1e-9 * rep.norm_a * rep.norm_a);
    int32_t tok[24];
    tokens(tok, 24, c->vocab_size, 2);
    float *lb = logits_of(B, tok, 24), *lp = logits_of(pB, tok, 24);
    TU_ASSERT_BELOW(logit_err(lp, lb, (size_t)24 * c->vocab_size), 1e-5);
    double l0, r0, l1, r1, ls, rs;
    TU_OK(wmat__align_sv_overlap(A, B, 4, &l0, &r0));
    TU_OK(wmat__align_sv_overlap(A, pB, 4, &l1, &r1));
    TU_OK(wmat__align_sv_overlap(A, A, 4, &ls, &rs));
    print_message("unrelated: ||A - B|| %.3f -> %.3f in %d sweeps; top-4 overlap left %.3f -> %.3f, right %.3f -> %.3f\n",
                  rep.dist_before, rep.dist_after, rep.iters, l0, l1, r0, r1);
    TU_ASSERT_NEAR(ls, 1.0, 1e-9);
    TU_ASSERT_NEAR(rs, 1.0, 1e-9);
    assert_true(l0 >= 0 && l0 <= 1 + 1e-9 && r1 >= 0 && r1 <= 1 + 1e-9);
    double cs[WMAT_ALIGN_ROLE_COUNT], cb[WMAT_ALIGN_ROLE_COUNT];
    TU_OK(wmat__align_role_cosines(A, A, cs));
    TU_OK(wmat__align_role_cosines(A, pB, cb));
    for (int r = 0; r < WMAT_ALIGN_ROLE_COUNT; r++) {
        TU_ASSERT_NEAR(cs[r], 1.0, 1e-12);
        assert_true(cb[r] >= -1 && cb[r] <= 1);
    }
    wmat_model *T = random_model(1, 52);
    TU_OK(wmat__align_role_cosines(T, T, cs));
    assert_true(isnan(cs[WMAT_ALIGN_ROLE_CLASSIFIER])); /* tied: no classifier of its own */
    TU_ASSERT_NEAR(cs[WMAT_ALIGN_ROLE_EMBED], 1.0, 1e-12);
    wmat_model_free(T);
    free(lb);
    free(lp);
    wmat_model_free(pB);
    wmat_model_free(A);
    wmat_model_free(B);
    wmat__align_perm_free(&p);
}

/* The path's end points are A and B exactly, and its loss at those points
 * is each model's own; along A -> pi(A) the end points give one loss. */
static void test_lerp_and_curve(void **state)
{
    (void)state;
    wmat_model *A = random_model(0, 60), *B = random_model(0, 61), *M = NULL;
    const wmat_config *c = wmat_model_config(A);
    TU_OK(wmat_model_create(&M, c));
    TU_OK(wmat__align_lerp(M, A, B, 0.0));
    double d;
    TU_OK(wmat__align_distance(M, A, &d, NULL));
    assert_true(d == 0.0);
    TU_OK(wmat__align_lerp(M, A, B, 1.0));
    TU_OK(wmat__align_distance(M, B, &d, NULL));
    assert_true(d == 0.0);
    TU_OK(wmat__align_lerp(M, A, B, 0.25));
    const float *x = wmat_model_tok_embeddings(A)->data, *y = wmat_model_tok_embeddings(B)->data,
                *z = wmat_model_tok_embeddings(M)->data;
    TU_ASSERT_NEAR(z[5], 0.75 * x[5] + 0.25 * y[5], 1e-6);
    const size_t n = 200;
    int32_t *tok = malloc(n * sizeof *tok);
    tokens(tok, (int)n, c->vocab_size, 4);
    double loss[5];
    TU_OK(wmat__align_lmc_curve(A, B, 5, tok, n, 16, 0, NULL, loss));
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 16;
    rp.kv_cache_len = 1;
    wmat_eval_result ea, eb;
    wmat_runtime *rt = NULL;
    TU_OK(wmat_runtime_create(&rt, A, &rp));
    TU_OK(wmat_eval_tokens(rt, tok, n, 16, 0, &ea));
    wmat_runtime_free(rt);
    TU_OK(wmat_runtime_create(&rt, B, &rp));
    TU_OK(wmat_eval_tokens(rt, tok, n, 16, 0, &eb));
    wmat_runtime_free(rt);
    print_message("curve: %.5f %.5f %.5f %.5f %.5f (A %.5f, B %.5f)\n", loss[0], loss[1], loss[2], loss[3], loss[4], ea.mean_nll,
                  eb.mean_nll);
    TU_ASSERT_NEAR(loss[0], ea.mean_nll, 1e-9);
    TU_ASSERT_NEAR(loss[4], eb.mean_nll, 1e-9);
    for (int k = 0; k < 5; k++) assert_true(isfinite(loss[k]));
    /* A -> pi(A) */
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, c));
    wmat__align_perm_random(&p, 70);
    wmat_model *pA = NULL;
    TU_OK(wmat__align_apply(A, &p, &pA));
    TU_OK(wmat__align_lmc_curve(A, pA, 3, tok, n, 16, 0, NULL, loss));
    TU_ASSERT_NEAR(loss[2], loss[0], 1e-5);
    assert_int_equal(wmat__align_lmc_curve(A, B, 1, tok, n, 16, 0, NULL, loss), WMAT_ERR_INVALID);
    wmat__align_perm_free(&p);
    wmat_model_free(pA);
    free(tok);
    wmat_model_free(M);
    wmat_model_free(A);
    wmat_model_free(B);
}

static void test_refuses_mismatch(void **state)
{
    (void)state;
    wmat_model *A = random_model(0, 1), *B = NULL;
    wmat_config c = *wmat_model_config(A);
    c.hidden_dim = 128;
    TU_OK(wmat_model_create(&B, &c));
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, wmat_model_config(A)));
    assert_int_equal(wmat__align_match(A, B, NULL, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "hidden_dim 96 vs 128"));
    wmat_model *X = B;
    assert_int_equal(wmat__align_apply(B, &p, &X), WMAT_ERR_INVALID); /* permutations of another shape */
    assert_null(X);
    wmat_model_free(B);
    wmat_model_free(A);
    wmat__align_perm_free(&p);
}

/* wmat align end to end: a permuted copy aligned back, written, read, and
 * equal to the original; --report writes the two-curve SVG. */
static void test_cli_align(void **state)
{
    (void)state;
    wmat_tokenizer *tok = NULL;
    TU_OK(wmat_tokenizer_bytes(&tok));
    wmat_config c = tu_config(32, 48, 2, 4, 2, wmat_tokenizer_vocab_size(tok), 32);
    wmat_model *A = NULL, *B = NULL;
    TU_OK(wmat_model_create(&A, &c));
    TU_OK(wmat_model_init_random(A, 12, 0.2f));
    wmat_model_set_tokenizer(A, tok);
    wmat_align_perm p;
    TU_OK(wmat__align_perm_init(&p, &c));
    wmat__align_perm_random(&p, 13);
    TU_OK(wmat__align_apply(A, &p, &B));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    TU_OK(wmat_model_save(A, tu_tmp("cliA.gguf"), &sp));
    TU_OK(wmat_model_save(B, tu_tmp("cliB.gguf"), &sp));
    const char *text = "One day a little dog went to the park. The dog saw a ball and ran after it. ";
    FILE *f = fopen(tu_tmp("t.txt"), "w");
    for (int i = 0; i < 8; i++) fputs(text, f);
    fclose(f);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s align %s %s %s --seed 3 --report %s --lmc-text %s --ctx 16 --threads 1 2>&1", tu_cli(),
             tu_tmp("cliA.gguf"), tu_tmp("cliB.gguf"), tu_tmp("cliC.gguf"), tu_tmp("lmc.svg"), tu_tmp("t.txt"));
    int code;
    char *out = tu_run(cmd, &code);
    print_message("%s", out);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "barrier"));
    free(out);
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    wmat_model *C = NULL;
    TU_OK(wmat_model_load(&C, tu_tmp("cliC.gguf"), &lp));
    double d;
    TU_OK(wmat__align_distance(A, C, &d, NULL));
    assert_true(d == 0.0);
    char *svg = NULL;
    size_t len;
    TU_OK(wmat_read_file(tu_tmp("lmc.svg"), &svg, &len));
    int lines = 0;
    for (char *s = svg; (s = strstr(s, "<polyline")); s++) lines++;
    assert_int_equal(lines, 2);
    free(svg);
    /* mismatched architectures: an error and no output */
    wmat_config c2 = c;
    c2.hidden_dim = 64;
    wmat_model *D = NULL;
    TU_OK(wmat_model_create(&D, &c2));
    TU_OK(wmat_model_init_random(D, 1, 0.2f));
    TU_OK(wmat_tokenizer_bytes(&tok));
    wmat_model_set_tokenizer(D, tok);
    TU_OK(wmat_model_save(D, tu_tmp("cliD.gguf"), &sp));
    snprintf(cmd, sizeof cmd, "%s align %s %s %s 2>&1", tu_cli(), tu_tmp("cliA.gguf"), tu_tmp("cliD.gguf"), tu_tmp("cliE.gguf"));
    out = tu_run(cmd, &code);
    assert_int_not_equal(code, 0);
    assert_non_null(strstr(out, "hidden_dim"));
    free(out);
    assert_null(fopen(tu_tmp("cliE.gguf"), "r"));
    /* one architecture, a tokenizer that differs in one piece: refused, no output */
    wmat_tokenizer *bt = NULL, *odd = NULL;
    TU_OK(wmat_tokenizer_bytes(&bt));
    const int nv = wmat_tokenizer_vocab_size(bt);
    const char **pieces = malloc((size_t)nv * sizeof *pieces);
    size_t *lens = malloc((size_t)nv * sizeof *lens);
    for (int i = 0; i < nv; i++) pieces[i] = wmat_tokenizer_piece(bt, i, &lens[i]);
    pieces[100] = "zz";
    lens[100] = 2;
    TU_OK(wmat_tokenizer_from_vocab(&odd, nv, pieces, lens, NULL, NULL, wmat_tokenizer_bos(bt), wmat_tokenizer_eos(bt)));
    free(pieces);
    free(lens);
    wmat_tokenizer_free(bt);
    wmat_model_set_tokenizer(B, odd);
    TU_OK(wmat_model_save(B, tu_tmp("cliF.gguf"), &sp));
    snprintf(cmd, sizeof cmd, "%s align %s %s %s 2>&1", tu_cli(), tu_tmp("cliA.gguf"), tu_tmp("cliF.gguf"), tu_tmp("cliG.gguf"));
    out = tu_run(cmd, &code);
    assert_int_not_equal(code, 0);
    assert_non_null(strstr(out, "different vocabularies (token 100"));
    free(out);
    assert_null(fopen(tu_tmp("cliG.gguf"), "r"));
    wmat_model_free(D);
    wmat_model_free(C);
    wmat_model_free(A);
    wmat_model_free(B);
    wmat__align_perm_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lap_brute_force),
        cmocka_unit_test(test_lap_planted),
        cmocka_unit_test(test_permutation_invariance_random),
        cmocka_unit_test(test_permutation_invariance_stories260k),
        cmocka_unit_test(test_permuted_roundtrip_formats),
        cmocka_unit_test(test_match_recovers_random),
        cmocka_unit_test(test_match_recovers_stories260k),
        cmocka_unit_test(test_match_unrelated),
        cmocka_unit_test(test_lerp_and_curve),
        cmocka_unit_test(test_refuses_mismatch),
        cmocka_unit_test(test_cli_align),
    };
    return tu_run_tests("align", tests, NULL, NULL);
}
