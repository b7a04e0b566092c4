/* The runtime against llama2.c: greedy text, logits of a literal run.c
 * reference, the published perplexities, format agreement, hooks, and
 * hostile checkpoints. */
#include "test_util.h"

#include "ref_llama2c.h"

#include "model/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.check_finite = 1;
    int rc = wmat_model_load(&m, path, &lp);
    if (rc) fail_msg("load %s: %s", path, wmat_last_error());
    return m;
}

/* threads <= 0: the default; base: a context to copy (progress), or NULL */
static wmat_runtime *runtime_ctx(wmat_model *m, int T, int kv, int threads, int pack, const wmat_context *base)
{
    wmat_context c = base ? *base : wmat_context_default();
    if (threads > 0) c.n_threads = threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    rp.kv_cache_len = kv;
    rp.pack_weights = pack;
    rp.ctx = &c; /* the runtime keeps a copy */
    wmat_runtime *rt = NULL;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    return rt;
}

static wmat_runtime *runtime(wmat_model *m, int T, int kv) { return runtime_ctx(m, T, kv, 0, 0, NULL); }

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation as run.c prints it (steps positions, prompt included). */
static char *greedy_text(wmat_model *m, const char *prompt, int steps)
{
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    assert_non_null(tok);
    int32_t *ids;
    size_t n;
    TU_OK(wmat_tokenizer_encode(tok, prompt, strlen(prompt), 1, 0, &ids, &n));
    const wmat_config *c = wmat_model_config(m);
    wmat_runtime *rt = runtime(m, 1, steps);
    float *logits = malloc((size_t)c->vocab_size * 4);
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    int32_t token = ids[0];
    for (int pos = 0; pos < steps; pos++) {
        TU_OK(wmat_decode(rt, token, pos, logits));
        int next = (size_t)pos + 1 < n ? ids[pos + 1] : argmax(logits, c->vocab_size);
        if (next == 1) break;
        char buf[8];
        size_t pl;
        const char *piece = wmat_tokenizer_decode(tok, token, next, buf, &pl);
        if (len + pl + 1 < cap) {
            memcpy(out + len, piece, pl);
            len += pl;
        }
        token = next;
    }
    free(logits);
    free(ids);
    wmat_runtime_free(rt);
    return out;
}

/* The continuation for a prompt in golden/stories260K_greedy.txt. */
static char *golden_text(const char *path, const char *prompt)
{
    char *all;
    size_t len;
    TU_OK(wmat_read_file(path, &all, &len));
    char key[256];
    snprintf(key, sizeof key, "### prompt: %s ", prompt);
    char *p = strstr(all, key);
    assert_non_null(p);
    p = strchr(p, '\n') + 1;
    char *end = strstr(p, "\n###");
    if (!end) end = all + len;
    while (end > p && end[-1] == '\n') end--;
    char *out = strndup(p, (size_t)(end - p));
    free(all);
    return out;
}

static void test_stories260K_greedy_matches_llama2c(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    TU_NEED_DATA(golden, "golden/stories260K_greedy.txt");
    wmat_model *m = load(model);
    const char *prompts[] = {"Once upon a time", "The little dog"};
    for (int i = 0; i < 2; i++) {
        char *want = golden_text(golden, prompts[i]);
        char *got = greedy_text(m, prompts[i], 128);
        /* run.c's output ends where the 128 positions end; compare all of it */
        if (strcmp(got, want) != 0) fail_msg("prompt '%s'\nwant: %s\ngot:  %s", prompts[i], want, got);
        free(want);
        free(got);
    }
    wmat_model_free(m);
}

/* Every llama2.c model: decode and batched forward against the literal
 * reference; greedy tokens identical. */
static void check_against_reference(const char *rel)
{
    const char *path = tu_data(rel);
    if (!path) {
        print_message("SKIP: %s not found\n", rel);
        return;
    }
    wmat_model *m = load(path);
    ref_model *ref = ref_load(path);
    assert_non_null(ref);
    const wmat_config *c = wmat_model_config(m);
    const int V = c->vocab_size, steps = c->seq_len < 96 ? c->seq_len : 96;
    wmat_runtime *rt = runtime(m, steps, steps);
    float *logits = malloc((size_t)V * 4), *batch = malloc((size_t)steps * V * 4);
    int32_t toks[512];
    int token = 1;
    double max_diff = 0, max_diff_batch = 0, scale = 0;
    for (int pos = 0; pos < steps; pos++) {
        toks[pos] = token;
        TU_OK(wmat_decode(rt, token, pos, logits));
        const float *rl = ref_forward(ref, token, pos);
        max_diff = fmax(max_diff, tu_max_abs_diff(logits, rl, (size_t)V, NULL));
        scale = fmax(scale, tu_max_abs(rl, (size_t)V));
        int a = argmax(logits, V), b = argmax(rl, V);
        if (a != b) fail_msg("%s: greedy token differs at position %d: wmat %d, reference %d", rel, pos, a, b);
        token = a;
    }
    /* batched forward of the same sequence, compared with the reference's
     * step-by-step logits (rerun the reference) */
    TU_OK(wmat_forward(rt, toks, steps, batch));
    ref_free(ref);
    ref = ref_load(path);
    for (int pos = 0; pos < steps; pos++) {
        const float *rl = ref_forward(ref, toks[pos], pos);
        max_diff_batch = fmax(max_diff_batch, tu_max_abs_diff(batch + (size_t)pos * V, rl, (size_t)V, NULL));
    }
    print_message("%s: %d greedy tokens equal; max |logit diff| decode %.2e, batched %.2e (logit scale %.1f)\n", rel,
                  steps, max_diff, max_diff_batch, scale);
    TU_ASSERT_BELOW(max_diff, 1e-4 * fmax(1.0, scale));
    TU_ASSERT_BELOW(max_diff_batch, 1e-4 * fmax(1.0, scale));
    free(logits);
    free(batch);
    ref_free(ref);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

static void test_all_llama2c_models_match_reference(void **state)
{
    (void)state;
    check_against_reference("models/stories260K.bin");
    check_against_reference("models/llama2xs_tinystories_iter500.bin");
    check_against_reference("models/aidreams260K.bin");
    check_against_reference("models/mix4m.bin");
}

static void test_eval_matches_published_refs(void **state)
{
    (void)state;
    TU_NEED_DATA(refs, "golden/eval_refs.tsv");
    char *tsv;
    size_t len;
    TU_OK(wmat_read_file(refs, &tsv, &len));
    char *save = NULL;
    int checked = 0;
    for (char *line = strtok_r(tsv, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char model[128], toks[128];
        int ctx, maxw;
        double nll, ppl;
        long scored;
        if (sscanf(line, "%127s %127s %d %d %lf %lf %ld", model, toks, &ctx, &maxw, &nll, &ppl, &scored) != 7) continue;
        char mrel[200], trel[200];
        snprintf(mrel, sizeof mrel, "models/%s", model);
        snprintf(trel, sizeof trel, "golden/%s", toks);
        const char *mp = tu_data(mrel), *tp = tu_data(trel);
        if (!mp || !tp) continue;
        wmat_model *m = load(mp);
        wmat_runtime *rt = runtime(m, ctx, 1);
        int32_t *ids;
        size_t n;
        TU_OK(wmat_read_tokens_u16(tp, &ids, &n));
        wmat_eval_result r;
        TU_OK(wmat_eval_tokens(rt, ids, n, ctx, maxw, &r));
        print_message("%s on %s: nll %.6f (ref %.6f), ppl %.4f (ref %.4f), %llu tokens, %.0f tok/s\n", model, toks,
                      r.mean_nll, nll, r.ppl, ppl, (unsigned long long)r.tokens_scored, r.tokens_per_s);
        assert_int_equal(r.tokens_scored, scored);
        TU_ASSERT_NEAR(r.mean_nll, nll, 1e-4 * nll);
        free(ids);
        wmat_runtime_free(rt);
        wmat_model_free(m);
        checked++;
    }
    free(tsv);
    assert_true(checked > 0);
}

static void test_eval_protocol_partial_window(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    wmat_runtime *rt = runtime(m, 16, 1);
    /* 40 tokens, ctx 16: windows 0..16, 16..32, 32..39 (partial): 39 scored */
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (i * 37 + 5) % 512;
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, 40, 16, 0, &r));
    assert_int_equal(r.tokens_scored, 39);
    assert_int_equal(r.windows, 3);
    /* the same NLL by hand: each window from an empty cache */
    float *lg = malloc(16 * 512 * 4);
    double total = 0;
    for (int w = 0; w < 3; w++) {
        int len = w < 2 ? 16 : 7;
        TU_OK(wmat_forward(rt, ids + 16 * w, len, lg));
        for (int t = 0; t < len; t++) {
            const float *row = lg + t * 512;
            double mx = row[0], s = 0;
            for (int i = 1; i < 512; i++) mx = fmax(mx, row[i]);
            for (int i = 0; i < 512; i++) s += exp(row[i] - mx);
            total += log(s) + mx - row[ids[16 * w + t + 1]];
        }
    }
    /* eval's normalizer uses a vectorized exp (~2 ulp in float) */
    print_message("NLL by hand %.12f, eval %.12f\n", total / 39, r.mean_nll);
    TU_ASSERT_NEAR(total / 39, r.mean_nll, 1e-6 * total / 39);
    TU_OK(wmat_eval_tokens(rt, ids, 40, 16, 2, &r));
    assert_int_equal(r.tokens_scored, 32);
    assert_int_equal(wmat_eval_tokens(rt, ids, 40, 17, 0, &r), WMAT_ERR_INVALID);
    free(lg);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

typedef struct {
    int calls[7];
    int classifier_calls;
    float *cls_x;
    int T;
    int abort_at_layer; /* > 0: abort at this layer's first linear */
} hook_state;

static int hook(void *user, int layer, wmat_linear_kind k, const float *X, int T, int in, const wmat_tensor *W)
{
    hook_state *s = user;
    assert_int_equal(in, (int)W->shape[1]);
    if (s->abort_at_layer > 0 && layer == s->abort_at_layer) return 1;
    if (k == WMAT_LIN_COUNT) {
        s->classifier_calls++;
        free(s->cls_x); /* the last call's input is kept */
        s->cls_x = malloc((size_t)T * in * 4);
        memcpy(s->cls_x, X, (size_t)T * in * 4);
        s->T = T;
    } else {
        s->calls[k]++;
    }
    (void)layer;
    return 0;
}

static void test_hooks_see_linear_inputs(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    wmat_runtime *rt = runtime(m, 32, 1);
    hook_state s;
    memset(&s, 0, sizeof s);
    wmat_runtime_set_hook(rt, hook, &s);
    int32_t ids[32];
    for (int i = 0; i < 32; i++) ids[i] = (i * 11 + 1) % 512;
    float *lg = malloc(32 * 512 * 4);
    TU_OK(wmat_forward(rt, ids, 32, lg));
    for (int k = 0; k < 7; k++) assert_int_equal(s.calls[k], 5);
    assert_int_equal(s.classifier_calls, 1);
    /* the classifier's input times its weight is the logits */
    const wmat_tensor *W = wmat_model_classifier(m);
    const float *w = W->data;
    double md = 0;
    for (int t = 0; t < 32; t++)
        for (int v = 0; v < 512; v++) {
            double acc = 0;
            for (int j = 0; j < 64; j++) acc += (double)s.cls_x[t * 64 + j] * w[v * 64 + j];
            md = fmax(md, tu_abs_diff(acc, lg[t * 512 + v]));
        }
    TU_ASSERT_BELOW(md, 1e-4);
    free(s.cls_x);
    free(lg);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

/* Decode on a team of threads (one parallel region per token) gives the
 * logits of the single-thread path bit for bit. */
static void test_decode_team_bit_equal(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    wmat_runtime *r1 = runtime_ctx(m, 1, 80, 1, 0, NULL), *r2 = runtime_ctx(m, 1, 80, 2, 0, NULL);
    const int V = wmat_model_config(m)->vocab_size;
    float *a = malloc((size_t)V * 4), *b = malloc((size_t)V * 4);
    for (int pos = 0; pos < 80; pos++) { /* past 64 too, where the old path split attention */
        int32_t tok = (pos * 37 + 11) % V;
        TU_OK(wmat_decode(r1, tok, pos, a));
        TU_OK(wmat_decode(r2, tok, pos, b));
        if (memcmp(a, b, (size_t)V * 4)) fail_msg("position %d: team logits differ from one thread's", pos);
    }
    free(a);
    free(b);
    wmat_runtime_free(r1);
    wmat_runtime_free(r2);
    wmat_model_free(m);
}

/* The batched path's RMSNorm and RoPE (vectorized) against the run.c
 * expressions decode uses: equal up to float rounding. */
static void test_batched_norm_rope(void **state)
{
    (void)state;
    const int hds[] = {8, 32, 64, 48};
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++) {
        const int hd = hds[a], nh = 4, nkv = 2, T = 7, half = hd / 2, D = nh * hd, KV = nkv * hd;
        float *q = malloc((size_t)T * D * 4), *k = malloc((size_t)T * KV * 4), *q2 = malloc((size_t)T * D * 4),
              *k2 = malloc((size_t)T * KV * 4), *cs = malloc((size_t)T * half * 4), *sn = malloc((size_t)T * half * 4);
        for (int i = 0; i < T * D; i++) q[i] = q2[i] = sinf((float)i * 0.37f) * 3.0f;
        for (int i = 0; i < T * KV; i++) k[i] = k2[i] = cosf((float)i * 0.53f) * 2.0f;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < half; i++) {
                float ang = (float)t / powf(10000.0f, 2.0f * (float)i / (float)hd);
                cs[t * half + i] = cosf(ang);
                sn[t * half + i] = sinf(ang);
            }
        wmat__rope_rows(q, D, nh, k, KV, nkv, T, T, hd, cs, sn, 1, 2);
        for (int t = 0; t < T; t++) {
            wmat__rope_row(q2 + (size_t)t * D, nh, hd, cs + t * half, sn + t * half);
            wmat__rope_row(k2 + (size_t)t * KV, nkv, hd, cs + t * half, sn + t * half);
        }
        TU_ASSERT_CLOSE(q, q2, (size_t)T * D, 1e-6f, 1e-6f);
        TU_ASSERT_CLOSE(k, k2, (size_t)T * KV, 1e-6f, 1e-6f);
        float *w = malloc((size_t)D * 4), *o1 = malloc((size_t)T * D * 4), *o2 = malloc((size_t)T * D * 4);
        for (int i = 0; i < D; i++) w[i] = 0.5f + (float)(i % 7) * 0.1f;
        wmat__rmsnorm(o1, NULL, q, w, T, D, 1e-5f, 1, 2);
        wmat__rmsnorm(o2, NULL, q, w, T, D, 1e-5f, 0, 1);
        TU_ASSERT_CLOSE(o1, o2, (size_t)T * D, 1e-5f, 1e-5f);
        free(q), free(k), free(q2), free(k2), free(cs), free(sn), free(w), free(o1), free(o2);
    }
}

/* The AVX-512 causal attention kernel against the definition in double:
 * every head dimension it takes, windows that are and are not multiples of
 * its 8-row and 32-key blocks, rows of q, k/v and out at their own strides. */
static void test_causal_attention_kernel(void **state)
{
    (void)state;
    const int hds[] = {16, 32, 64, 128}, Ts[] = {1, 5, 8, 9, 31, 33, 64, 100, 256};
    int ran = 0;
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof Ts / sizeof *Ts; b++) {
            const int hd = hds[a], T = Ts[b], qs = hd * 3 + 16, ks = hd * 2, os = hd + 16;
            float *q = malloc((size_t)T * qs * 4), *k = malloc((size_t)T * ks * 4), *v = malloc((size_t)T * ks * 4);
            float *out = malloc((size_t)T * os * 4), *scr = malloc(wmat__causal_attention_scratch(T, hd) * 4);
            uint64_t r = 12345 + (uint64_t)(hd * 1000 + T);
            for (size_t i = 0; i < (size_t)T * qs; i++) q[i] = (float)((int)((r = r * 6364136223846793005ULL + 1) >> 40) % 2001 - 1000) / 400.0f;
            for (size_t i = 0; i < (size_t)T * ks; i++) {
                k[i] = (float)((int)((r = r * 6364136223846793005ULL + 1) >> 40) % 2001 - 1000) / 400.0f;
                v[i] = (float)((int)((r = r * 6364136223846793005ULL + 1) >> 40) % 2001 - 1000) / 1000.0f;
            }
            for (size_t i = 0; i < (size_t)T * os; i++) out[i] = NAN; /* the columns past hd must stay untouched */
            const float scale = 1.0f / sqrtf((float)hd);
            if (!wmat__causal_attention(out, os, q, qs, k, v, ks, T, hd, scale, scr)) {
                free(q), free(k), free(v), free(out), free(scr);
                continue;
            }
            ran++;
            double md = 0;
            double *p = malloc((size_t)T * sizeof(double));
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += (double)q[(size_t)t * qs + i] * k[(size_t)j * ks + i];
                    p[j] = d * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += p[j] / sum * v[(size_t)j * ks + i];
                    md = fmax(md, tu_abs_diff(o, out[(size_t)t * os + i]));
                }
                for (int i = hd; i < os; i++) assert_true(isnan(out[(size_t)t * os + i]));
            }
            if (!(md <= 2e-6)) fail_msg("hd %d, T %d: max |diff| %.3g", hd, T, md);
            free(p), free(q), free(k), free(v), free(out), free(scr);
        }
    if (!ran) skip();
}

/* eval over several threads runs whole windows on worker runtimes; the
 * result must not depend on that, and progress, cancellation and errors
 * inside a worker must reach the caller. */
typedef struct {
    uint64_t last_done, last_total;
    int calls, cancel_at;
} progress_state;

static int on_progress(void *user, const char *what, uint64_t done, uint64_t total)
{
    progress_state *p = user;
    (void)what;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
    return p->cancel_at > 0 && p->calls >= p->cancel_at;
}

static void test_eval_parallel_windows(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    const size_t n = 1000;
    int32_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 37 + 5) % 512);
    wmat_eval_result r1, r2, rh;
    progress_state ps = {0, 0, 0, 0};
    wmat_context two = wmat_context_default();
    two.progress = on_progress;
    two.progress_user = &ps;
    wmat_runtime *rt1 = runtime_ctx(m, 64, 1, 1, 0, NULL), *rt2 = runtime_ctx(m, 64, 1, 2, 1, &two);
    TU_OK(wmat_eval_tokens(rt1, ids, n, 64, 0, &r1));
    TU_OK(wmat_eval_tokens(rt2, ids, n, 64, 0, &r2));
    assert_int_equal(r1.windows, 16);
    assert_int_equal(r2.windows, 16);
    assert_int_equal(r1.tokens_scored, r2.tokens_scored);
    print_message("1 thread %.12f, 2 threads (packed %zu B) %.12f\n", r1.mean_nll, wmat_runtime_packed_bytes(rt2),
                  r2.mean_nll);
    TU_ASSERT_NEAR(r1.mean_nll, r2.mean_nll, 1e-6 * r1.mean_nll);
    assert_int_equal(ps.last_done, 16);
    assert_int_equal(ps.last_total, 16);
    assert_true(ps.calls >= 1);
    /* a hooked runtime evaluates window by window (the hook sees each forward) */
    hook_state hs;
    memset(&hs, 0, sizeof hs);
    wmat_runtime_set_hook(rt2, hook, &hs);
    TU_OK(wmat_eval_tokens(rt2, ids, n, 64, 0, &rh));
    assert_int_equal(hs.classifier_calls, 16);
    free(hs.cls_x);
    /* the same runtime window by window agrees to float order (its GEMMs
     * split over two threads, whose kernels may sum in another order than
     * a one-thread worker's on CPUs without AVX-512); a race between
     * workers sharing packed weights or scratch shows as two parallel runs
     * that differ in any bit */
    TU_ASSERT_NEAR(rh.mean_nll, r2.mean_nll, 1e-6 * r2.mean_nll);
    wmat_runtime_set_hook(rt2, NULL, NULL);
    for (int rep = 0; rep < 3; rep++) {
        wmat_eval_result again;
        TU_OK(wmat_eval_tokens(rt2, ids, n, 64, 0, &again));
        assert_true(again.mean_nll == r2.mean_nll);
    }
    wmat_runtime_set_hook(rt2, NULL, NULL);
    /* cancellation from the progress callback */
    ps.calls = 0;
    ps.cancel_at = 1;
    assert_int_equal(wmat_eval_tokens(rt2, ids, n, 64, 0, &r2), WMAT_ERR_CANCELLED);
    ps.cancel_at = 0;
    /* a target outside the vocabulary in window 11 is reported from the worker */
    ids[11 * 64 + 20] = 600;
    assert_int_equal(wmat_eval_tokens(rt2, ids, n, 64, 0, &r2), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "outside the vocabulary"));
    free(ids);
    wmat_runtime_free(rt1);
    wmat_runtime_free(rt2);
    wmat_model_free(m);
}

/* Weights packed for the GEMM library give the logits of the plain path;
 * with another backend selected nothing is packed. */
static void test_packed_weights(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    wmat_runtime *plain = runtime_ctx(m, 48, 1, 0, 0, NULL), *packed = runtime_ctx(m, 48, 1, 0, 1, NULL);
    const wmat_gemm_backend be = wmat_gemm_get_backend();
    if (wmat_gemm_backend_available(WMAT_GEMM_ONEDNN) && (be == WMAT_GEMM_AUTO || be == WMAT_GEMM_ONEDNN)) {
        /* 5 layers of 7 linears + the classifier, each at least its own size */
        size_t want = 0;
        for (int l = 0; l < 5; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) want += wmat_tensor_nelem(wmat_model_linear(m, l, (wmat_linear_kind)k)) * 4;
        want += wmat_tensor_nelem(wmat_model_classifier(m)) * 4;
        assert_true(wmat_runtime_packed_bytes(packed) >= want);
    } else {
        assert_int_equal(wmat_runtime_packed_bytes(packed), 0); /* WMAT_GEMM_BACKEND chose another library */
    }
    int32_t ids[48];
    for (int i = 0; i < 48; i++) ids[i] = (i * 29 + 3) % 512;
    float *a = malloc(48 * 512 * 4), *b = malloc(48 * 512 * 4);
    for (int T = 48; T >= 1; T -= 47) { /* one primitive serves every window length */
        TU_OK(wmat_forward(plain, ids, T, a));
        TU_OK(wmat_forward(packed, ids, T, b));
        double md = tu_max_abs_diff(a, b, (size_t)T * 512, NULL), mx = tu_max_abs(a, (size_t)T * 512);
        if (!(md <= 1e-5 * mx)) fail_msg("T %d: max |diff| %.3g above 1e-5 * %.3g", T, md, mx);
    }
    wmat_runtime_free(packed);
    wmat_gemm_backend was = wmat_gemm_get_backend();
    TU_OK(wmat_gemm_set_backend(WMAT_GEMM_REFERENCE));
    packed = runtime_ctx(m, 48, 1, 0, 1, NULL);
    assert_int_equal(wmat_runtime_packed_bytes(packed), 0);
    TU_OK(wmat_forward(packed, ids, 48, b));
    TU_OK(wmat_gemm_set_backend(was));
    wmat_runtime_free(packed);
    free(a);
    free(b);
    wmat_runtime_free(plain);
    wmat_model_free(m);
}

/* embed + blocks in two ranges + head is wmat_forward, bit for bit; bad
 * ranges are refused; a hook abort leaves X_out as it was. */
static void test_forward_in_pieces(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    wmat_runtime *rt = runtime(m, 32, 1);
    int32_t ids[32];
    for (int i = 0; i < 32; i++) ids[i] = (i * 7 + 3) % 512;
    float *ref = malloc(32 * 512 * 4), *lg = malloc(32 * 512 * 4), *X = malloc(32 * 64 * 4), *Y = malloc(32 * 64 * 4);
    TU_OK(wmat_forward(rt, ids, 32, ref));
    for (int split = 0; split <= 5; split++) {
        TU_OK(wmat_forward_embed(rt, ids, 32, X));
        TU_OK(wmat_forward_layers(rt, X, Y, 32, 0, split));
        TU_OK(wmat_forward_layers(rt, Y, Y, 32, split, 5));
        TU_OK(wmat_forward_head(rt, Y, 32, lg));
        assert_memory_equal(ref, lg, 32 * 512 * 4);
    }
    assert_int_equal(wmat_forward_layers(rt, X, Y, 32, 2, 6), WMAT_ERR_INVALID);
    assert_int_equal(wmat_forward_layers(rt, X, Y, 32, 3, 2), WMAT_ERR_INVALID);
    assert_int_equal(wmat_forward_layers(rt, X, Y, 33, 0, 1), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "windows of 1..32"));
    hook_state s;
    memset(&s, 0, sizeof s);
    s.abort_at_layer = 1;
    wmat_runtime_set_hook(rt, hook, &s);
    for (int i = 0; i < 32 * 64; i++) Y[i] = -1.0f;
    assert_int_equal(wmat_forward_layers(rt, X, Y, 32, 0, 5), WMAT_ERR_CANCELLED);
    for (int i = 0; i < 32 * 64; i++) assert_true(Y[i] == -1.0f);
    free(s.cls_x);
    free(ref);
    free(lg);
    free(X);
    free(Y);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

static void compare_logits(const char *a, const char *b)
{
    wmat_model *ma = load(a), *mb = load(b);
    const wmat_config *c = wmat_model_config(ma);
    int T = 64;
    wmat_runtime *ra = runtime(ma, T, 1), *rb = runtime(mb, T, 1);
    int32_t ids[64];
    for (int i = 0; i < T; i++) ids[i] = (i * 29 + 1) % c->vocab_size;
    float *la = malloc((size_t)T * c->vocab_size * 4), *lb = malloc((size_t)T * c->vocab_size * 4);
    TU_OK(wmat_forward(ra, ids, T, la));
    TU_OK(wmat_forward(rb, ids, T, lb));
    double md = tu_max_abs_diff(la, lb, (size_t)T * c->vocab_size, NULL);
    print_message("%s vs %s: max |logit diff| %.3g\n", a, b, md);
    TU_ASSERT_BELOW(md, 1e-4);
    free(la);
    free(lb);
    wmat_runtime_free(ra);
    wmat_runtime_free(rb);
    wmat_model_free(ma);
    wmat_model_free(mb);
}

static void test_formats_give_same_logits(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/stories260K.bin");
    TU_NEED_DATA(gguf, "models/stories260K.gguf");
    compare_logits(bin, gguf);
    TU_NEED_DATA(mbin, "models/mix4m.bin");
    TU_NEED_DATA(mhf, "models/mix4m-hf");
    compare_logits(mbin, mhf);
}

/* ---- hostile llama2.c checkpoints */

static int load_err(const char *path, const char *must_contain)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.check_finite = 1;
    lp.tokenizer_path = NULL;
    int rc = wmat_model_load(&m, path, &lp);
    assert_null(m);
    assert_int_not_equal(rc, WMAT_OK);
    if (!strstr(wmat_last_error(), path)) fail_msg("error does not name the file: %s", wmat_last_error());
    if (must_contain && !strstr(wmat_last_error(), must_contain))
        fail_msg("error '%s' does not mention '%s'", wmat_last_error(), must_contain);
    return rc;
}

static void test_hostile_llama2c(void **state)
{
    (void)state;
    TU_NEED_DATA(src, "models/stories260K.bin");
    char *data;
    size_t len;
    TU_OK(wmat_read_file(src, &data, &len));
    const char *p = tu_tmp("hostile.bin");
    /* truncated at many points */
    size_t cuts[] = {0, 3, 27, 28, 100, len / 2, len - 4, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        assert_int_equal(tu_write_file(p, data, cuts[i]), 0);
        load_err(p, NULL);
    }
    /* trailing garbage */
    char *big = malloc(len + 8);
    memcpy(big, data, len);
    memset(big + len, 0, 8);
    assert_int_equal(tu_write_file(p, big, len + 8), 0);
    load_err(p, "trailing");
    free(big);
    /* header fields */
    int32_t bad[][7] = {
        {0, 172, 5, 8, 4, 512, 512},         {64, -1, 5, 8, 4, 512, 512},        {64, 172, 5, 7, 4, 512, 512},
        {64, 172, 5, 8, 3, 512, 512},        {64, 172, 5, 8, 0, 512, 512},       {64, 172, 5, 8, 4, INT32_MIN, 512},
        {2147483647, 2147483647, 2147483647, 1, 1, 2147483647, 2147483647}, {64, 172, 5, 8, 16, 512, 512},
        {64, 172, 5, 64, 64, 512, 512},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(data, bad[i], 28);
        assert_int_equal(tu_write_file(p, data, len), 0);
        load_err(p, NULL);
    }
    /* NaN weight */
    TU_OK(wmat_read_file(src, &big, &len));
    float nanv = NAN;
    memcpy(big + 28 + 4 * 1000, &nanv, 4);
    assert_int_equal(tu_write_file(p, big, len), 0);
    assert_int_equal(load_err(p, "non-finite"), WMAT_ERR_NUMERIC);
    free(big);
    free(data);
    load_err(tu_tmp("does-not-exist.bin"), NULL);
}

static void test_save_llama2c_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(src, "models/stories260K.bin");
    wmat_model *m = load(src);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_LLAMA2C;
    const char *out = tu_tmp("rt.bin");
    TU_OK(wmat_model_save(m, out, &sp));
    wmat_model *m2 = load(out);
    assert_non_null(wmat_model_tokenizer(m2)); /* written beside it as rt_tok512.bin */
    assert_int_equal(wmat_model_n_tensors(m), wmat_model_n_tensors(m2));
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *a = wmat_model_tensor(m, i), *b = wmat_model_find(m2, a->name);
        assert_non_null(b);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    sp.dtype = WMAT_F16;
    assert_int_equal(wmat_model_save(m, tu_tmp("x.bin"), &sp), WMAT_ERR_UNSUPPORTED);
    wmat_model_free(m2);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260K_greedy_matches_llama2c),
        cmocka_unit_test(test_all_llama2c_models_match_reference),
        cmocka_unit_test(test_eval_matches_published_refs),
        cmocka_unit_test(test_eval_protocol_partial_window),
        cmocka_unit_test(test_hooks_see_linear_inputs),
        cmocka_unit_test(test_forward_in_pieces),
        cmocka_unit_test(test_decode_team_bit_equal),
        cmocka_unit_test(test_batched_norm_rope),
        cmocka_unit_test(test_causal_attention_kernel),
        cmocka_unit_test(test_eval_parallel_windows),
        cmocka_unit_test(test_packed_weights),
        cmocka_unit_test(test_formats_give_same_logits),
        cmocka_unit_test(test_hostile_llama2c),
        cmocka_unit_test(test_save_llama2c_roundtrip),
    };
    return tu_run_tests("model", tests, NULL, NULL);
}
