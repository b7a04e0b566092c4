/* ggml's K- and I-quant types (Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL,
 * IQ4_XS) against llama.cpp itself: files written by llama.cpp's own
 * quantizer (lcq, ../shared/tools/llamacpp-quant, on node-llama-cpp's
 * prebuilt libraries) from mix4m load in wmat, every tensor dequantizes to
 * exactly the values llama.cpp's dequantization gives, wmat's Q4_1/Q5_0/
 * Q5_1 quantizer writes llama.cpp's bytes, and the perplexity of a K-quant
 * file matches llama.cpp's on the same windows. Skipped without mix4m or
 * without node-llama-cpp. */
#include "test_util.h"

#include "llamacpp.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_lcq, *g_f32;

/* llama.cpp file types and the wmat dtypes each must contain */
static const struct {
    const char *ftype;
    wmat_dtype want;
} g_types[] = {
    {"Q4_1", WMAT_Q4_1},     {"Q5_0", WMAT_Q5_0},   {"Q5_1", WMAT_Q5_1},     {"Q2_K", WMAT_Q2_K},
    {"Q3_K_M", WMAT_Q3_K},   {"Q4_K_M", WMAT_Q4_K}, {"Q5_K_M", WMAT_Q5_K},   {"Q6_K", WMAT_Q6_K},
    {"IQ4_NL", WMAT_IQ4_NL}, {"IQ4_XS", WMAT_IQ4_XS},
};
#define N_TYPES (sizeof g_types / sizeof g_types[0])

static int setup(void **state)
{
    (void)state;
    const char *why = NULL;
    const char *mix = tu_data("models/mix4m.bin");
    if (!mix) return 0;
    g_lcq = llamacpp_lcq(&why);
    if (!g_lcq) {
        print_message("note: %s\n", why);
        return 0;
    }
    static char f32[1024];
    snprintf(f32, sizeof f32, "%s", tu_tmp("mix4m-f32.gguf"));
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' '%s' --to gguf 2>&1", tu_cli(), mix, f32);
    int code = 0;
    free(tu_run(cmd, &code));
    if (code) return -1;
    g_f32 = f32;
    return 0;
}

#define NEED_PEER()                                                                                  \
    if (!g_f32) {                                                                                    \
        print_message("SKIP: needs ../shared/data/models/mix4m.bin and llama.cpp (node-llama-cpp)\n"); \
        skip();                                                                                      \
        return;                                                                                      \
    }

/* llama.cpp's quantization of the f32 file to ftype (cached per process) */
static const char *lcq_file(const char *ftype)
{
    static char path[N_TYPES][1024];
    for (size_t i = 0; i < N_TYPES; i++) {
        if (strcmp(g_types[i].ftype, ftype)) continue;
        if (!path[i][0]) {
            char name[64], cmd[4096];
            snprintf(name, sizeof name, "m-%s.gguf", ftype);
            snprintf(path[i], sizeof path[i], "%s", tu_tmp(name));
            snprintf(cmd, sizeof cmd, "'%s' quantize '%s' '%s' %s 2>&1", g_lcq, g_f32, path[i], ftype);
            int code = 0;
            char *out = tu_run(cmd, &code);
            if (code) fail_msg("lcq quantize %s failed:\n%s", ftype, out ? out : "");
            free(out);
        }
        return path[i];
    }
    fail_msg("no type %s", ftype);
    return NULL;
}

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params p = wmat_load_default_params();
    p.materialize_f32 = 0; /* the tensors as the file stores them */
    TU_OK(wmat_model_load(&m, path, &p));
    return m;
}

/* Every tensor of every llama.cpp file dequantizes to llama.cpp's values,
 * bit for bit (llama.cpp's own `dequant` of the same file), and each file
 * holds the block type it is named for. */
static void test_dequant_equals_llamacpp(void **state)
{
    (void)state;
    NEED_PEER();
    for (size_t i = 0; i < N_TYPES; i++) {
        const char *q = lcq_file(g_types[i].ftype);
        char ref[1024], cmd[4096];
        snprintf(ref, sizeof ref, "%s.f32.gguf", q);
        snprintf(cmd, sizeof cmd, "'%s' dequant '%s' '%s' 2>&1", g_lcq, q, ref);
        int code = 0;
        char *out = tu_run(cmd, &code);
        if (code) fail_msg("lcq dequant failed:\n%s", out ? out : "");
        free(out);
        wmat_model *mq = load(q), *mr = load(ref);
        int seen = 0, checked = 0;
        for (int t = 0; t < wmat_model_n_tensors(mq); t++) {
            wmat_tensor *a = wmat_model_tensor(mq, t);
            wmat_tensor *b = wmat_model_find(mr, a->name);
            assert_non_null(b);
            assert_int_equal(b->dtype, WMAT_F32);
            const int64_t n = wmat_tensor_nelem(a);
            assert_int_equal(n, wmat_tensor_nelem(b));
            seen |= a->dtype == g_types[i].want;
            if (a->dtype == WMAT_F32) continue;
            float *x = malloc((size_t)n * sizeof *x);
            assert_non_null(x);
            TU_OK(wmat_to_f32(x, a->data, a->dtype, (uint64_t)n));
            if (memcmp(x, b->data, (size_t)n * 4)) {
                const float *y = b->data;
                int64_t k = 0;
                while (k < n && !memcmp(&x[k], &y[k], 4)) k++;
                fail_msg("%s %s (%s): value %lld is %.9g, llama.cpp says %.9g", g_types[i].ftype, a->name,
                         wmat_dtype_info(a->dtype)->name, (long long)k, x[k], y[k]);
            }
            free(x);
            checked++;
        }
        if (!seen) fail_msg("%s: no tensor of type %s", g_types[i].ftype, wmat_dtype_info(g_types[i].want)->name);
        print_message("  %-7s %d quantized tensors equal llama.cpp's dequantization\n", g_types[i].ftype, checked);
        wmat_model_free(mq);
        wmat_model_free(mr);
    }
}

/* ggml's reference rules for Q4_1, Q5_0 and Q5_1: wmat writes llama.cpp's
 * bytes for every tensor llama.cpp stored in that type. */
static void test_simple_types_byte_equal(void **state)
{
    (void)state;
    NEED_PEER();
    wmat_model *mf = load(g_f32);
    for (size_t i = 0; i < 3; i++) {
        wmat_model *mq = load(lcq_file(g_types[i].ftype));
        int checked = 0;
        for (int t = 0; t < wmat_model_n_tensors(mq); t++) {
            wmat_tensor *a = wmat_model_tensor(mq, t);
            if (a->dtype != g_types[i].want) continue;
            const wmat_tensor *f = wmat_model_find(mf, a->name);
            assert_non_null(f);
            assert_int_equal(f->dtype, WMAT_F32);
            unsigned char *mine = malloc(a->nbytes);
            assert_non_null(mine);
            TU_OK(wmat_from_f32(mine, a->dtype, f->data, (uint64_t)wmat_tensor_nelem(a)));
            if (memcmp(mine, a->data, a->nbytes)) fail_msg("%s %s: wmat's bytes differ from llama.cpp's", g_types[i].ftype, a->name);
            free(mine);
            checked++;
        }
        assert_true(checked > 0);
        print_message("  %-5s %d tensors byte-equal\n", g_types[i].ftype, checked);
        wmat_model_free(mq);
    }
    wmat_model_free(mf);
}

static int is_kquant(wmat_dtype dt)
{
    return dt == WMAT_Q2_K || dt == WMAT_Q3_K || dt == WMAT_Q4_K || dt == WMAT_Q5_K || dt == WMAT_Q6_K;
}

/* llama.cpp's searched K-quant scales without an imatrix (its reference
 * rule, quantize_row_*_ref): wmat writes llama.cpp's bytes for every
 * K-quant tensor of its Q2_K, Q3_K_M, Q4_K_M, Q5_K_M and Q6_K files. */
static void test_kquants_byte_equal(void **state)
{
    (void)state;
    NEED_PEER();
    wmat_model *mf = load(g_f32);
    static const char *const which[] = {"Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"};
    int seen[WMAT_DTYPE_COUNT] = {0};
    for (size_t i = 0; i < sizeof which / sizeof which[0]; i++) {
        wmat_model *mq = load(lcq_file(which[i]));
        int checked = 0;
        for (int t = 0; t < wmat_model_n_tensors(mq); t++) {
            wmat_tensor *a = wmat_model_tensor(mq, t);
            if (!is_kquant(a->dtype)) continue;
            const wmat_tensor *f = wmat_model_find(mf, a->name);
            assert_non_null(f);
            unsigned char *mine = malloc(a->nbytes);
            assert_non_null(mine);
            TU_OK(wmat_from_f32(mine, a->dtype, f->data, (uint64_t)wmat_tensor_nelem(a)));
            if (memcmp(mine, a->data, a->nbytes)) {
                size_t k = 0;
                while (((const unsigned char *)a->data)[k] == mine[k]) k++;
                fail_msg("%s %s (%s): wmat's bytes differ from llama.cpp's at byte %zu of %zu", which[i], a->name,
                         wmat_dtype_info(a->dtype)->name, k, a->nbytes);
            }
            free(mine);
            seen[a->dtype]++;
            checked++;
        }
        assert_true(checked > 0);
        print_message("  %-6s %d K-quant tensors byte-equal\n", which[i], checked);
        wmat_model_free(mq);
    }
    assert_true(seen[WMAT_Q2_K] && seen[WMAT_Q3_K] && seen[WMAT_Q4_K] && seen[WMAT_Q5_K] && seen[WMAT_Q6_K]);
    wmat_model_free(mf);
}

static double ppl_of(const char *out, const char *key)
{
    const char *p = out ? strstr(out, key) : NULL;
    return p ? strtod(p + strlen(key), NULL) : NAN;
}

/* Perplexity of llama.cpp's Q4_K_M and IQ4_XS files in wmat and in
 * llama.cpp, same windows (lcq ppl follows wmat eval's protocol): within
 * 0.1%. */
static void test_ppl_matches_llamacpp(void **state)
{
    (void)state;
    NEED_PEER();
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    const char *which[] = {"Q4_K_M", "IQ4_XS", "Q2_K"};
    for (int i = 0; i < 3; i++) {
        const char *q = lcq_file(which[i]);
        char cmd[4096];
        int code = 0;
        snprintf(cmd, sizeof cmd, "'%s' eval '%s' --tokens '%s' --max-windows 16 --json 2>/dev/null", tu_cli(), q, tok);
        char *a = tu_run(cmd, &code);
        assert_int_equal(code, 0);
        snprintf(cmd, sizeof cmd, "'%s' ppl '%s' '%s' --ctx 256 --windows 16 2>/dev/null", g_lcq, q, tok);
        char *b = tu_run(cmd, &code);
        assert_int_equal(code, 0);
        const double pa = ppl_of(a, "\"ppl\":"), pb = ppl_of(b, "\"ppl\":");
        free(a);
        free(b);
        print_message("  %-6s wmat %.6f llama.cpp %.6f (%+.4f%%)\n", which[i], pa, pb, 100 * (pa / pb - 1));
        TU_ASSERT_BELOW(fabs(pa / pb - 1), 1e-3);
    }
}

/* wmat's GGUF of mix4m in a block type (written again each time) */
static void wmat_writes(const char *mix, const char *type, char *out, size_t n)
{
    char name[64], cmd[4096];
    snprintf(name, sizeof name, "w-%s.gguf", type);
    snprintf(out, n, "%s", tu_tmp(name));
    int code = 0;
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' '%s' --to gguf --dtype %s 2>&1", tu_cli(), mix, out, type);
    free(tu_run(cmd, &code));
    assert_int_equal(code, 0);
}

/* Every type wmat writes loads in llama.cpp, which scores it as wmat does
 * (8 windows, within 0.5%); the K-quant rows that are no multiple of 256
 * (mix4m's ffn_down) took llama.cpp's fallback type. */
static void test_written_files_load_in_llamacpp(void **state)
{
    (void)state;
    NEED_PEER();
    TU_NEED_DATA(mix, "models/mix4m.bin");
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    static const char *const types[] = {"q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char out[1024], cmd[4096];
        int code = 0;
        wmat_writes(mix, types[i], out, sizeof out);
        wmat_model *m = load(out);
        const wmat_tensor *gate = wmat_model_linear(m, 0, WMAT_LIN_GATE), *down = wmat_model_linear(m, 0, WMAT_LIN_DOWN);
        assert_string_equal(wmat_dtype_info(gate->dtype)->name, types[i]);
        assert_int_equal(down->shape[1] % wmat_dtype_info(down->dtype)->block_size, 0);
        wmat_model_free(m);
        snprintf(cmd, sizeof cmd, "'%s' eval '%s' --tokens '%s' --max-windows 8 --json 2>/dev/null", tu_cli(), out, tok);
        char *a = tu_run(cmd, &code);
        assert_int_equal(code, 0);
        snprintf(cmd, sizeof cmd, "'%s' ppl '%s' '%s' --ctx 256 --windows 8 2>/dev/null", g_lcq, out, tok);
        char *b = tu_run(cmd, &code);
        if (code) fail_msg("llama.cpp could not score wmat's %s file:\n%s", types[i], b ? b : "");
        const double pa = ppl_of(a, "\"ppl\":"), pb = ppl_of(b, "\"ppl\":");
        free(a);
        free(b);
        print_message("  %-6s wmat %.6f llama.cpp %.6f (%+.4f%%)\n", types[i], pa, pb, 100 * (pa / pb - 1));
        TU_ASSERT_BELOW(fabs(pa / pb - 1), 5e-3);
    }
}

/* llama.cpp's greedy path on wmat's K- and I-quant files is wmat's up to
 * near-ties: along llama.cpp's 32 tokens (teacher-forced), each token it
 * chose is wmat's argmax or within 0.05 of it in wmat's logits (llama.cpp
 * multiplies K-quants with int8-quantized activations, wmat in fp32). */
static void test_written_files_same_greedy_path(void **state)
{
    (void)state;
    NEED_PEER();
    TU_NEED_DATA(mix, "models/mix4m.bin");
    static const char *const types[] = {"q3_k", "q4_k", "q6_k", "iq4_xs"};
    const char *prompt = "Once upon a time";
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char out[1024];
        wmat_writes(mix, types[i], out, sizeof out);
        llamacpp_result r;
        const char *why = NULL;
        const int rc = llamacpp_greedy(out, prompt, 32, &r, &why);
        if (rc == 1) {
            print_message("SKIP: %s\n", why);
            skip();
            return;
        }
        if (rc) fail_msg("llama.cpp could not run %s:\n%s", out, r.raw ? r.raw : "");
        assert_int_equal(r.n_tokens, 32);

        wmat_model *m = NULL;
        wmat_load_params lp = wmat_load_default_params();
        lp.keep_stored = 1;
        TU_OK(wmat_model_load(&m, out, &lp));
        int32_t *ids = NULL;
        size_t np = 0;
        TU_OK(wmat_tokenizer_encode(wmat_model_tokenizer(m), prompt, strlen(prompt), 1, 0, &ids, &np));
        const int T = (int)np + 32;
        int32_t *seq = malloc((size_t)T * sizeof *seq);
        assert_non_null(seq);
        memcpy(seq, ids, np * sizeof *seq);
        memcpy(seq + np, r.tokens, 32 * sizeof *seq);
        wmat_runtime *rt = NULL;
        wmat_runtime_params rp = wmat_runtime_default_params();
        TU_OK(wmat_runtime_create(&rt, m, &rp));
        const int V = wmat_runtime_vocab(rt);
        float *logits = malloc((size_t)T * (size_t)V * sizeof *logits);
        assert_non_null(logits);
        TU_OK(wmat_forward(rt, seq, T, logits));
        int ties = 0;
        double worst = 0;
        for (int k = 0; k < 32; k++) {
            const float *lg = logits + (size_t)(np + k - 1) * V;
            int best = 0;
            for (int v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = v;
            const double gap = (double)lg[best] - (double)lg[seq[np + k]];
            if (!(gap < 0.05))
                fail_msg("%s: llama.cpp's token %d (%d) is %g below wmat's best (%d)", types[i], k, seq[np + k], gap, best);
            ties += best != seq[np + k];
            if (gap > worst) worst = gap;
        }
        print_message("  %-6s llama.cpp's 32 greedy tokens: %d wmat's argmax, %d near-ties (gap <= %.4f)\n", types[i],
                      32 - ties, ties, worst);
        free(logits);
        free(seq);
        free(ids);
        wmat_runtime_free(rt);
        wmat_model_free(m);
        llamacpp_result_free(&r);
    }
}

/* Types and bytes of two GGUF files, tensor by tensor: the same names,
 * the same types, the same bytes when `bytes` (returns the tensors seen). */
static int same_tensors(const char *what, const char *a_path, const char *b_path, int bytes)
{
    wmat_model *a = load(a_path), *b = load(b_path);
    assert_int_equal(wmat_model_n_tensors(a), wmat_model_n_tensors(b));
    int n = 0;
    for (int t = 0; t < wmat_model_n_tensors(a); t++) {
        const wmat_tensor *x = wmat_model_tensor(a, t), *y = wmat_model_find(b, x->name);
        assert_non_null(y);
        if (x->dtype != y->dtype)
            fail_msg("%s %s: llama.cpp chose %s, wmat %s", what, x->name, wmat_dtype_info(x->dtype)->name,
                     wmat_dtype_info(y->dtype)->name);
        assert_int_equal(x->nbytes, y->nbytes);
        if (bytes && memcmp(x->data, y->data, x->nbytes))
            fail_msg("%s %s (%s): wmat's bytes differ from llama.cpp's", what, x->name, wmat_dtype_info(x->dtype)->name);
        n++;
    }
    wmat_model_free(a);
    wmat_model_free(b);
    return n;
}

/* `wmat quantize --ggml FTYPE --method rtn` writes llama.cpp's file of that
 * type without an imatrix: every tensor in the type llama.cpp's rules
 * chose (mix4m: attn_v and ffn_down by layer, the 704-wide ffn_down's
 * fallbacks, the tied embedding at Q6_K) and in llama.cpp's bytes. On
 * stories260K's shapes (widths 64 and 172: the 32-block fallbacks and F16)
 * the types agree too. */
static void test_ggml_mix_equals_llamacpp(void **state)
{
    (void)state;
    NEED_PEER();
    TU_NEED_DATA(mix, "models/mix4m.bin");
    static const char *const ft[] = {"Q4_K_M", "Q4_K_S", "Q3_K_M", "Q3_K_S", "Q5_K_M", "Q2_K"};
    char cmd[4096], out[1024], ref[1024], lower[16];
    int code = 0;
    for (size_t i = 0; i < sizeof ft / sizeof ft[0]; i++) {
        size_t k = 0;
        for (; ft[i][k] && k + 1 < sizeof lower; k++) lower[k] = (char)tolower((unsigned char)ft[i][k]);
        lower[k] = 0;
        snprintf(ref, sizeof ref, "%s", tu_tmp("mix-ref.gguf"));
        snprintf(cmd, sizeof cmd, "'%s' quantize '%s' '%s' %s 2>&1", g_lcq, g_f32, ref, ft[i]);
        free(tu_run(cmd, &code));
        assert_int_equal(code, 0);
        snprintf(out, sizeof out, "%s", tu_tmp("mix-wmat.gguf"));
        snprintf(cmd, sizeof cmd, "'%s' quantize '%s' '%s' --to gguf --ggml %s --method rtn --quiet 2>&1", tu_cli(), mix, out,
                 lower);
        char *o = tu_run(cmd, &code);
        if (code) fail_msg("wmat quantize --ggml %s failed:\n%s", lower, o ? o : "");
        free(o);
        const int n = same_tensors(ft[i], ref, out, 1);
        print_message("  %-6s %d tensors: llama.cpp's types and bytes\n", ft[i], n);
    }
    const char *s260 = tu_data("models/stories260K.bin");
    if (!s260) return;
    char f32[1024];
    snprintf(f32, sizeof f32, "%s", tu_tmp("s260-f32.gguf"));
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' '%s' --to gguf 2>&1", tu_cli(), s260, f32);
    free(tu_run(cmd, &code));
    assert_int_equal(code, 0);
    for (size_t i = 0; i < 4; i++) {
        size_t k = 0;
        for (; ft[i][k] && k + 1 < sizeof lower; k++) lower[k] = (char)tolower((unsigned char)ft[i][k]);
        lower[k] = 0;
        snprintf(ref, sizeof ref, "%s", tu_tmp("s260-ref.gguf"));
        snprintf(cmd, sizeof cmd, "'%s' quantize '%s' '%s' %s 2>&1", g_lcq, f32, ref, ft[i]);
        free(tu_run(cmd, &code));
        assert_int_equal(code, 0);
        snprintf(out, sizeof out, "%s", tu_tmp("s260-wmat.gguf"));
        snprintf(cmd, sizeof cmd, "'%s' quantize '%s' '%s' --to gguf --ggml %s --method rtn --quiet 2>&1", tu_cli(), s260,
                 out, lower);
        free(tu_run(cmd, &code));
        assert_int_equal(code, 0);
        const int n = same_tensors(ft[i], ref, out, 0);
        print_message("  stories260K %-6s %d tensors: llama.cpp's types\n", ft[i], n);
    }
}

/* wmat's GPTQ-chosen Q4_K_M and Q3_K_M files load in llama.cpp, which
 * scores them as wmat does (8 windows, within 0.5%). */
static void test_gptq_ggml_files_load_in_llamacpp(void **state)
{
    (void)state;
    NEED_PEER();
    TU_NEED_DATA(mix, "models/mix4m.bin");
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    TU_NEED_DATA(cal, "golden/tinystories_valid_head.tok512.u16");
    static const char *const ft[] = {"q4_k_m", "q3_k_m"};
    for (size_t i = 0; i < 2; i++) {
        char out[1024], cmd[4096];
        int code = 0;
        snprintf(out, sizeof out, "%s", tu_tmp("gptq-ggml.gguf"));
        snprintf(cmd, sizeof cmd,
                 "'%s' quantize '%s' '%s' --to gguf --ggml %s --method gptq --calib '%s' --calib-tokens 4096 "
                 "--calib-ctx 256 --quiet 2>&1",
                 tu_cli(), mix, out, ft[i], cal);
        char *o = tu_run(cmd, &code);
        if (code) fail_msg("wmat quantize --ggml %s --method gptq failed:\n%s", ft[i], o ? o : "");
        free(o);
        snprintf(cmd, sizeof cmd, "'%s' eval '%s' --tokens '%s' --max-windows 8 --json 2>/dev/null", tu_cli(), out, tok);
        char *a = tu_run(cmd, &code);
        assert_int_equal(code, 0);
        snprintf(cmd, sizeof cmd, "'%s' ppl '%s' '%s' --ctx 256 --windows 8 2>/dev/null", g_lcq, out, tok);
        char *b = tu_run(cmd, &code);
        if (code) fail_msg("llama.cpp could not score wmat's %s file:\n%s", ft[i], b ? b : "");
        const double pa = ppl_of(a, "\"ppl\":"), pb = ppl_of(b, "\"ppl\":");
        free(a);
        free(b);
        print_message("  gptq %-6s wmat %.6f llama.cpp %.6f (%+.4f%%)\n", ft[i], pa, pb, 100 * (pa / pb - 1));
        TU_ASSERT_BELOW(fabs(pa / pb - 1), 5e-3);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_equals_llamacpp),
        cmocka_unit_test(test_simple_types_byte_equal),
        cmocka_unit_test(test_kquants_byte_equal),
        cmocka_unit_test(test_ppl_matches_llamacpp),
        cmocka_unit_test(test_written_files_load_in_llamacpp),
        cmocka_unit_test(test_written_files_same_greedy_path),
        cmocka_unit_test(test_ggml_mix_equals_llamacpp),
        cmocka_unit_test(test_gptq_ggml_files_load_in_llamacpp),
    };
    return tu_run_tests("gguf_kquants", tests, setup, NULL);
}
