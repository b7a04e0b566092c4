/* Perplexity protocols (wmat_eval_stream, `wmat eval --protocol`):
 * llama.cpp's protocol scores exactly the second half of each chunk, with
 * BOS written over the chunk's first token, computed here independently
 * from wmat_forward's logits; --chunks limits the chunks; a stream too short
 * for two chunks is refused with a message; the wmat protocol equals
 * wmat_eval_tokens; and on mix4m the perplexity and its "+/-" equal
 * llama.cpp's own (tests/peer/lcppl.cpp, the llama.cpp peer, skipped
 * without node-llama-cpp). */
#include "test_util.h"

#include "llamacpp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX 8
#define VOCAB 64
#define BOS 1

/* A small random LLaMA (vocab 64, context 32, BOS 1). */
static wmat_model *tiny_model(void)
{
    wmat_config cfg = tu_config(16, 32, 2, 4, 2, VOCAB, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, 1234);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *d = t->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) d[j] = 0.5f * wmat_rng_normal(&r);
    }
    return m;
}

/* A stream with no BOS in it (ids 2..63), so replacing a chunk's first
 * token changes the input. */
static void fill_stream(int32_t *ids, size_t n)
{
    uint32_t s = 99;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        ids[i] = 2 + (int32_t)((s >> 8) % (VOCAB - 2));
    }
}

/* -log softmax(row)[target] in double */
static double nll(const float *row, int target)
{
    double mx = row[0], s = 0.0;
    for (int v = 1; v < VOCAB; v++) mx = row[v] > mx ? row[v] : mx;
    for (int v = 0; v < VOCAB; v++) s += exp((double)row[v] - mx);
    return log(s) + mx - (double)row[target];
}

/* The protocol written out: chunk c = ids[c*CTX .. c*CTX+CTX) with its first
 * replaced by bos (bos < 0: kept), logits from one forward, predictions
 * at positions CTX/2 .. CTX-2 scored. Fills the per-token NLLs; returns how
 * many. */
static size_t direct(wmat_model *m, const int32_t *ids, int n_chunks, int bos, double *out)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = CTX;
    rp.kv_cache_len = 1;
    wmat_runtime *rt = NULL;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    float *logits = malloc((size_t)CTX * VOCAB * sizeof *logits);
    assert_non_null(logits);
    size_t k = 0;
    for (int c = 0; c < n_chunks; c++) {
        int32_t in[CTX];
        memcpy(in, ids + (size_t)c * CTX, sizeof in);
        if (bos >= 0) in[0] = bos;
        TU_OK(wmat_forward(rt, in, CTX, logits));
        for (int t = CTX / 2; t <= CTX - 2; t++) out[k++] = nll(logits + (size_t)t * VOCAB, ids[c * CTX + t + 1]);
    }
    free(logits);
    wmat_runtime_free(rt);
    return k;
}

/* mean, and llama.cpp's error of exp(mean) from the NLLs (two-pass variance) */
static void summarize(const double *v, size_t k, double *ppl, double *err)
{
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < k; i++) mean += v[i];
    mean /= (double)k;
    for (size_t i = 0; i < k; i++) var += (v[i] - mean) * (v[i] - mean);
    var /= (double)k;
    *ppl = exp(mean);
    *err = *ppl * sqrt(var / (double)(k - 1));
}

static wmat_eval_params llama_params(int chunks, int threads)
{
    wmat_eval_params p = wmat_eval_default_params();
    p.protocol = WMAT_EVAL_LLAMACPP;
    p.ctx = CTX;
    p.max_chunks = chunks;
    p.n_threads = threads;
    p.pack_weights = 0;
    return p;
}

/* Scored positions, BOS replacement, the partial last chunk dropped, the
 * error formula; one thread and three give the same sums. */
static void test_chunks_positions_and_bos(void **state)
{
    (void)state;
    wmat_model *m = tiny_model();
    const size_t n = 3 * CTX + 5; /* three whole chunks and 5 tokens that no chunk reads */
    int32_t ids[3 * CTX + 5];
    fill_stream(ids, n);
    double v[3 * CTX];
    const size_t k = direct(m, ids, 3, BOS, v);
    assert_int_equal(k, 3 * (CTX - CTX / 2 - 1));
    double ppl, err;
    summarize(v, k, &ppl, &err);
    for (int threads = 1; threads <= 3; threads += 2) {
        wmat_eval_params p = llama_params(0, threads);
        wmat_eval_result r;
        TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
        assert_int_equal(r.windows, 3);
        assert_int_equal(r.tokens_scored, k);
        assert_true(fabs(r.ppl - ppl) <= 1e-5 * ppl);
        assert_true(fabs(r.ppl_err - err) <= 1e-4 * err);
        assert_true(err > 0);
    }
    /* without the replacement (bos -2) the chunks' own first tokens are read */
    double v2[3 * CTX], ppl2, err2;
    direct(m, ids, 3, -1, v2);
    summarize(v2, k, &ppl2, &err2);
    wmat_eval_params p = llama_params(0, 1);
    p.bos = -2;
    wmat_eval_result r;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
    assert_true(fabs(r.ppl - ppl2) <= 1e-5 * ppl2);
    assert_true(fabs(ppl2 - ppl) > 1e-4 * ppl); /* BOS matters here, so the check above saw it */
    /* an explicit BOS id is written as given */
    double v3[3 * CTX], ppl3, err3;
    direct(m, ids, 3, 7, v3);
    summarize(v3, k, &ppl3, &err3);
    p.bos = 7;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
    assert_true(fabs(r.ppl - ppl3) <= 1e-5 * ppl3);
    wmat_model_free(m);
}

/* max_chunks: the first K chunks only; more than there are: all. */
static void test_chunk_limit(void **state)
{
    (void)state;
    wmat_model *m = tiny_model();
    const size_t n = 4 * CTX;
    int32_t ids[4 * CTX];
    fill_stream(ids, n);
    double v[4 * CTX], ppl, err;
    for (int K = 1; K <= 4; K++) {
        const size_t k = direct(m, ids, K, BOS, v);
        summarize(v, k, &ppl, &err);
        wmat_eval_params p = llama_params(K, 1);
        wmat_eval_result r;
        TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
        assert_int_equal(r.windows, K);
        assert_int_equal(r.tokens_scored, (uint64_t)K * (CTX - CTX / 2 - 1));
        assert_true(fabs(r.ppl - ppl) <= 1e-5 * ppl);
    }
    wmat_eval_params p = llama_params(9, 1);
    wmat_eval_result r;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
    assert_int_equal(r.windows, 4);
    wmat_model_free(m);
}

/* Fewer than 2 x ctx tokens (llama-perplexity's limit), a context that
 * scores nothing or exceeds the model's: refused, saying why. The wmat
 * protocol still scores a stream shorter than its window. */
static void test_short_stream_refused(void **state)
{
    (void)state;
    wmat_model *m = tiny_model();
    int32_t ids[2 * CTX];
    fill_stream(ids, 2 * CTX);
    wmat_eval_params p = llama_params(0, 1);
    wmat_eval_result r;
    assert_int_equal(wmat_eval_stream(m, ids, 2 * CTX - 1, &p, &r), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "at least 2 x ctx = 16 tokens"));
    assert_non_null(strstr(wmat_last_error(), "has 15"));
    assert_int_equal(r.tokens_scored, 0);
    p.ctx = 2;
    assert_int_equal(wmat_eval_stream(m, ids, 2 * CTX, &p, &r), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "scores none"));
    p.ctx = 33;
    assert_int_equal(wmat_eval_stream(m, ids, 2 * CTX, &p, &r), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "longer than the model's"));
    p = llama_params(0, 1);
    TU_OK(wmat_eval_stream(m, ids, 2 * CTX, &p, &r)); /* exactly two chunks */
    assert_int_equal(r.windows, 2);
    p.protocol = WMAT_EVAL_WMAT;
    p.ctx = 30;
    TU_OK(wmat_eval_stream(m, ids, 2 * CTX, &p, &r));
    assert_int_equal(r.windows, 1);
    assert_int_equal(r.tokens_scored, 2 * CTX - 1);
    wmat_eval_protocol pr;
    assert_int_equal(wmat_eval_protocol_from_name("llama.cpp", &pr), WMAT_OK);
    assert_int_equal(pr, WMAT_EVAL_LLAMACPP);
    assert_int_equal(wmat_eval_protocol_from_name("llama", &pr), WMAT_ERR_INVALID);
    wmat_model_free(m);
}

/* The wmat protocol through wmat_eval_stream is wmat_eval_tokens, bit for bit. */
static void test_wmat_protocol_is_eval_tokens(void **state)
{
    (void)state;
    wmat_model *m = tiny_model();
    const size_t n = 5 * CTX + 3;
    int32_t ids[5 * CTX + 3];
    fill_stream(ids, n);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = CTX;
    rp.kv_cache_len = 1;
    wmat_runtime *rt = NULL;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result a, b;
    TU_OK(wmat_eval_tokens(rt, ids, n, CTX, 4, &a));
    wmat_runtime_free(rt);
    wmat_eval_params p = wmat_eval_default_params();
    p.ctx = CTX;
    p.max_chunks = 4;
    p.pack_weights = 0;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &b));
    assert_int_equal(a.windows, 4);
    assert_int_equal(b.windows, 4);
    assert_int_equal(a.tokens_scored, 4 * CTX);
    assert_int_equal(b.tokens_scored, a.tokens_scored);
    assert_true(a.mean_nll == b.mean_nll);
    assert_true(a.ppl_err > 0 && a.ppl_err == b.ppl_err);
    wmat_model_free(m);
}

static char *run_cli(const char *args, int *code)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' eval %s 2>&1", tu_cli(), args);
    return tu_run(cmd, code);
}

/* `wmat eval --protocol llama.cpp --chunks K` prints the chunks, the scored
 * positions and PPL +/- err; bad values are usage errors (2); the default
 * output keeps its lines. */
static void test_cli_protocol_flag(void **state)
{
    (void)state;
    TU_NEED_DATA(mix, "models/mix4m.bin");
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    char args[2048];
    int code = 0;
    snprintf(args, sizeof args, "'%s' --tokens '%s' --ctx 64 --chunks 3 --protocol llama.cpp --threads 1", mix, tok);
    char *out = run_cli(args, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "ctx 64, 3 chunks"));
    assert_non_null(strstr(out, "positions 32..62 scored"));
    assert_non_null(strstr(out, "+/- "));
    assert_non_null(strstr(out, "scored        93 tokens"));
    free(out);
    snprintf(args, sizeof args, "'%s' --tokens '%s' --ctx 64 --max-windows 3 --protocol llama.cpp --json --threads 1", mix,
             tok);
    out = run_cli(args, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "\"protocol\": \"llama.cpp\", \"chunks\": 3, \"ppl_err\": "));
    assert_non_null(strstr(out, "\"tokens_scored\": 93,"));
    free(out);
    snprintf(args, sizeof args, "'%s' --tokens '%s' --ctx 64 --chunks 3 --threads 1", mix, tok);
    out = run_cli(args, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "ctx 64, 3 windows"));
    assert_null(strstr(out, "+/-"));
    assert_null(strstr(out, "protocol"));
    assert_non_null(strstr(out, "scored        192 tokens"));
    free(out);
    snprintf(args, sizeof args, "'%s' --tokens '%s' --protocol llama", mix, tok);
    out = run_cli(args, &code);
    assert_int_equal(code, 2);
    assert_non_null(strstr(out, "give wmat or llama.cpp"));
    free(out);
    snprintf(args, sizeof args, "'%s' --tokens '%s' --chunks 2 --max-windows 3", mix, tok);
    out = run_cli(args, &code);
    assert_int_equal(code, 2);
    free(out);
}

/* Peer: mix4m as an F32 GGUF written by `wmat convert`, WikiText-2 valid,
 * n_ctx 256, 16 chunks: wmat's perplexity and its +/- equal llama.cpp's
 * (its C API, tests/peer/lcppl.cpp) to 1e-3 relative; so does the number of
 * scored tokens exactly. */
static void test_llamacpp_ppl_matches_mix4m(void **state)
{
    (void)state;
    TU_NEED_DATA(mix, "models/mix4m.bin");
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    const char *why = NULL;
    if (!llamacpp_lcppl(&why)) {
        print_message("SKIP: %s\n", why);
        skip();
        return;
    }
    char gguf[1024], cmd[4096];
    snprintf(gguf, sizeof gguf, "%s", tu_tmp("mix4m-f32.gguf"));
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' '%s' --to gguf 2>&1", tu_cli(), mix, gguf);
    int code = 0;
    char *out = tu_run(cmd, &code);
    if (code) fail_msg("convert failed:\n%s", out ? out : "");
    free(out);
    llamacpp_ppl ref;
    int rc = llamacpp_perplexity(gguf, tok, 256, 16, &ref, &why);
    if (rc == 1) {
        print_message("SKIP: %s\n", why);
        skip();
        return;
    }
    assert_int_equal(rc, 0);
    int32_t *ids = NULL;
    size_t n = 0;
    TU_OK(wmat_read_tokens_u16(tok, &ids, &n));
    wmat_model *m = tu_load_f32(gguf);
    wmat_eval_params p = wmat_eval_default_params();
    p.protocol = WMAT_EVAL_LLAMACPP;
    p.ctx = 256;
    p.max_chunks = 16;
    wmat_eval_result r;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
    print_message("wmat %.6f +/- %.6f, llama.cpp %.6f +/- %.6f (%lld tokens, %d chunks)\n", r.ppl, r.ppl_err, ref.ppl,
                  ref.ppl_err, ref.tokens_scored, ref.chunks);
    assert_int_equal(ref.chunks, 16);
    assert_int_equal(r.windows, 16);
    assert_int_equal((long long)r.tokens_scored, ref.tokens_scored);
    assert_true(fabs(r.ppl - ref.ppl) <= 1e-3 * ref.ppl);
    assert_true(fabs(r.ppl_err - ref.ppl_err) <= 1e-3 * ref.ppl_err);
    wmat_model_free(m);
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks_positions_and_bos),
        cmocka_unit_test(test_chunk_limit),
        cmocka_unit_test(test_short_stream_refused),
        cmocka_unit_test(test_wmat_protocol_is_eval_tokens),
        cmocka_unit_test(test_cli_protocol_flag),
        cmocka_unit_test(test_llamacpp_ppl_matches_mix4m),
    };
    return tu_run_tests("eval_protocol", tests, NULL, NULL);
}
