/* Execution contexts are independent: two runtimes with different thread
 * counts, GEMM backends and int8-activation choices, used in turns in one
 * process, give bit for bit what each gives alone, also after the process
 * default backend changes under them. */
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int threads;
    wmat_gemm_backend gemm;
    int act8;
} setting;

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.keep_stored = 1;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static wmat_runtime *make(wmat_model *m, const setting *s, wmat_context *ctx)
{
    *ctx = wmat_context_default();
    ctx->n_threads = s->threads;
    ctx->gemm = s->gemm;
    ctx->act8 = s->act8;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 32;
    rp.kv_cache_len = 16;
    rp.ctx = ctx;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    return rt;
}

/* A batched forward of 32 tokens, then 8 decode steps: all logits. */
static void run(wmat_runtime *rt, int V, float *out)
{
    int32_t ids[32];
    for (int t = 0; t < 32; t++) ids[t] = (t * 29 + 3) % V;
    TU_OK(wmat_forward(rt, ids, 32, out));
    for (int p = 0; p < 8; p++) TU_OK(wmat_decode(rt, ids[p], p, out + (size_t)(32 + p) * V));
}

static void check_pair(wmat_model *m, const setting *a, const setting *b)
{
    const int V = wmat_model_config(m)->vocab_size;
    const size_t n = (size_t)40 * V;
    float *a0 = malloc(n * sizeof(float)), *b0 = malloc(n * sizeof(float));
    float *a1 = malloc(n * sizeof(float)), *b1 = malloc(n * sizeof(float));
    wmat_context ca, cb;
    wmat_runtime *ra = make(m, a, &ca);
    run(ra, V, a0);
    wmat_runtime_free(ra);
    wmat_runtime *rb = make(m, b, &cb);
    run(rb, V, b0);
    wmat_runtime_free(rb);
    /* both alive, used in turns, the process default moved in between */
    ra = make(m, a, &ca);
    rb = make(m, b, &cb);
    const wmat_gemm_backend before = wmat_gemm_get_backend();
    run(ra, V, a1);
    TU_OK(wmat_gemm_set_backend(WMAT_GEMM_REFERENCE));
    run(rb, V, b1);
    TU_OK(wmat_gemm_set_backend(before));
    assert_memory_equal(a0, a1, n * sizeof(float));
    assert_memory_equal(b0, b1, n * sizeof(float));
    run(ra, V, a1);
    assert_memory_equal(a0, a1, n * sizeof(float));
    for (size_t i = 0; i < n; i++) assert_true(a0[i] == a0[i] && b0[i] == b0[i]); /* no NaN */
    wmat_runtime_free(ra);
    wmat_runtime_free(rb);
    free(a0), free(b0), free(a1), free(b1);
}

static void test_two_runtimes_fp32(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    const wmat_gemm_backend other = wmat_gemm_backend_available(WMAT_GEMM_ONEDNN) ? WMAT_GEMM_ONEDNN : WMAT_GEMM_OPENBLAS;
    const setting a = {1, WMAT_GEMM_REFERENCE, -1}, b = {2, other, -1};
    check_pair(m, &a, &b);
    wmat_model_free(m);
}

/* A packed model: the int8-activation choice is per runtime too. */
static void test_two_runtimes_stored_kinds(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    /* every linear weight as q8_0 (rows of 64 = two blocks) */
    const wmat_config *c = wmat_model_config(m);
    const char *tmp = tu_tmp("ctx-q8.gguf");
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = WMAT_Q8_0;
    TU_OK(wmat_model_save(m, tmp, &sp));
    wmat_model_free(m);
    m = load(tmp);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "q8_0");
    (void)c;
    const setting a = {1, WMAT_GEMM_AUTO, 1}, b = {2, WMAT_GEMM_REFERENCE, 0};
    check_pair(m, &a, &b);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_runtimes_fp32),
        cmocka_unit_test(test_two_runtimes_stored_kinds),
    };
    return tu_run_tests("context", tests, NULL, NULL);
}
