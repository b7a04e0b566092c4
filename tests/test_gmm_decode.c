/* Decoding a model with the Gaussian-mixture attention mask
 * (wmat_config.gmm_kernels; src/model/gmm_mask.c, the KV-cached step in
 * src/model/forward.c):
 * - greedy decode, prompt and new tokens one position at a time, gives at
 *   every position the logits of the batched forward over the whole
 *   sequence (to 1e-5), so each greedy token is the argmax of the full
 *   forward's logits; on one thread with GQA, and on two threads with a
 *   width at which the unmasked decode runs as one parallel region
 *   (decode_team), past the 64 positions where heads go parallel;
 * - the mask is in effect (the same weights without it give other logits);
 * - `wmat train --init ... --gmm-kernels K` trains a masked model from the
 *   CLI, writes it as a native directory that `eval` and `generate` run,
 *   and refuses other formats and a pretrained model. */
#include "test_util.h"

#include "io/model_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static wmat_model *masked_model(const wmat_config *c, uint64_t seed, float std)
{
    wmat_model *m;
    TU_OK(wmat_model_create(&m, c));
    TU_OK(wmat_model_init_random(m, seed, std));
    if (!c->gmm_kernels) return m;
    /* the paper's init (sigma ~ N(10, 10^2)); one kernel per head narrowed
     * so that the mask changes within a few positions too */
    for (int l = 0; l < c->n_layers; l++) {
        char name[WMAT_NAME_MAX];
        wmat__gmm_mask_name(name, sizeof name, l);
        wmat_tensor *t = wmat_model_find(m, name);
        assert_non_null(t);
        float *p = t->data;
        for (int h = 0; h < c->n_heads; h++) p[(size_t)h * 2 * c->gmm_kernels + 1] = 1.0f + (float)(h % 4);
    }
    return m;
}

/* Greedy decode of N positions from a prompt of NP tokens; the logits of
 * each step into dl (N, V) and the sequence into seq. */
static void greedy(wmat_runtime *rt, const int32_t *prompt, int NP, int N, int V, int32_t *seq, float *dl)
{
    seq[0] = prompt[0];
    for (int pos = 0; pos < N; pos++) {
        TU_OK(wmat_decode(rt, seq[pos], pos, dl + (size_t)pos * V));
        if (pos + 1 < N) seq[pos + 1] = pos + 1 < NP ? prompt[pos + 1] : argmax(dl + (size_t)pos * V, V);
    }
}

/* std: the weights' init (logits of a few units: float rounding of the
 * decode's sums against the GEMM's stays well below 1e-5) */
static void check_decode(wmat_config c, int threads, float std, const char *what)
{
    const int N = c.seq_len, V = c.vocab_size, NP = 3;
    wmat_model *m = masked_model(&c, 5, std);
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &ctx;
    rp.max_batch_tokens = N;
    rp.kv_cache_len = N;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t prompt[3] = {1, 7 % V, 11 % V}, *seq = malloc((size_t)N * sizeof *seq);
    float *dl = malloc((size_t)N * V * sizeof *dl), *fl = malloc((size_t)N * V * sizeof *fl);
    greedy(rt, prompt, NP, N, V, seq, dl);
    TU_OK(wmat_forward(rt, seq, N, fl));
    size_t worst;
    const double d = tu_max_abs_diff(dl, fl, (size_t)N * V, &worst);
    print_message("%s: largest |decode - forward| logit %.3g (position %zu of %d), largest logit %.3g\n", what, d,
                  worst / (size_t)V, N, tu_max_abs(fl, (size_t)N * V));
    TU_ASSERT_BELOW(d, 1e-5);
    /* each greedy token is the argmax of the full forward's logits */
    for (int pos = NP - 1; pos + 1 < N; pos++)
        if (argmax(fl + (size_t)pos * V, V) != seq[pos + 1])
            fail_msg("%s: position %d: greedy token %d, the forward's argmax %d", what, pos, seq[pos + 1],
                     argmax(fl + (size_t)pos * V, V));
    /* the mask is in effect: the same weights without it score otherwise */
    wmat_config c0 = c;
    c0.gmm_kernels = 0;
    wmat_model *m0 = masked_model(&c0, 5, std);
    wmat_runtime *rt0;
    TU_OK(wmat_runtime_create(&rt0, m0, &rp));
    float *f0 = malloc((size_t)N * V * sizeof *f0);
    TU_OK(wmat_forward(rt0, seq, N, f0));
    const double d0 = tu_max_abs_diff(f0, fl, (size_t)N * V, NULL);
    /* (for scale: the unmasked model's decode against its forward) */
    int32_t *seq0 = malloc((size_t)N * sizeof *seq0);
    greedy(rt0, prompt, NP, N, V, seq0, dl);
    TU_OK(wmat_forward(rt0, seq0, N, f0));
    print_message("%s: largest |masked - unmasked| logit %.3g; unmasked |decode - forward| %.3g\n", what, d0,
                  tu_max_abs_diff(dl, f0, (size_t)N * V, NULL));
    assert_true(d0 > 1e-3);
    free(seq0);
    free(f0);
    wmat_runtime_free(rt0);
    wmat_model_free(m0);
    free(seq), free(dl), free(fl);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

static void test_greedy_decode_matches_forward(void **state)
{
    (void)state;
    wmat_config c = tu_config(32, 64, 2, 4, 2, 40, 24); /* GQA: 2 query heads per KV head, head width 8 */
    c.gmm_kernels = 3;
    check_decode(c, 1, 0.1f, "dim 32, 1 thread");
    /* dim 256 on two threads: an unmasked model would decode in one
     * parallel region; 80 positions: the heads split across threads */
    wmat_config w = tu_config(256, 256, 1, 16, 8, 48, 80);
    w.gmm_kernels = 2;
    check_decode(w, 2, 0.05f, "dim 256, 2 threads");
}

static char *text_file(void)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s", tu_tmp("gmm_text.txt"));
    size_t n = 0, cap = 32 * 1024;
    char *buf = malloc(cap);
    const char *lines[] = {"the cat sat on the mat.\n", "and the dog sat on the log.\n", "then the cat ran to the dog.\n"};
    while (n + 40 < cap) {
        const char *l = lines[(n / 5) % 3];
        const size_t k = strlen(l);
        memcpy(buf + n, l, k);
        n += k;
    }
    assert_int_equal(tu_write_file(path, buf, n), 0);
    free(buf);
    return path;
}

static void test_cli_train_gmm_mask(void **state)
{
    (void)state;
    const char *txt = text_file();
    char dir[2048], cmd[16384];
    snprintf(dir, sizeof dir, "%s", tu_tmp("gmm_cli_model"));
    int rc;
    snprintf(cmd, sizeof cmd,
             "%s train --init tiny %s --byte-tokenizer --gmm-kernels 2 --data %s --eval %s --steps 6 --batch 2 --ctx 32 "
             "--max-windows 4 --threads 1 --json 2>/dev/null",
             tu_cli(), dir, txt, txt);
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat train --gmm-kernels failed (%d): %s", rc, o);
    assert_non_null(strstr(o, "\"val_loss_end\""));
    free(o);
    /* the native directory holds the mask; eval and generate run it */
    wmat_model *m;
    TU_OK(wmat_model_load(&m, dir, NULL));
    assert_int_equal(wmat_model_config(m)->gmm_kernels, 2);
    wmat_model_free(m);
    snprintf(cmd, sizeof cmd, "%s eval %s --text %s --ctx 32 --max-windows 4 --json 2>&1", tu_cli(), dir, txt);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat eval of the masked model failed: %s", o);
    assert_non_null(strstr(o, "\"ppl\""));
    free(o);
    snprintf(cmd, sizeof cmd, "%s generate %s --prompt 'the cat' -n 12 --temp 0 --threads 1 2>&1", tu_cli(), dir);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat generate of the masked model failed: %s", o);
    assert_non_null(strstr(o, "the cat"));
    free(o);
    /* refused: a format that cannot store the mask, a pretrained model, an adapter */
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --gmm-kernels 2 --data %s --steps 2 2>&1", tu_cli(),
             tu_tmp("gmm.gguf"), txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(o, "native directory"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s train %s %s --gmm-kernels 2 --data %s --steps 2 2>&1", tu_cli(), dir,
             tu_tmp("gmm_again"), txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(o, "--init"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --gmm-kernels 2 --method sltrain --data %s --steps 2 2>&1",
             tu_cli(), tu_tmp("gmm_sl"), txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(o, "adapters"));
    free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_decode_matches_forward),
        cmocka_unit_test(test_cli_train_gmm_mask),
    };
    return tu_run_tests("gmm_decode", tests, NULL, NULL);
}
