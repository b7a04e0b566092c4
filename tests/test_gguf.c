/* GGUF reader and writer (src/io/gguf.c):
 *  - stories260K.gguf loads to the same weights and vocabulary as
 *    stories260K.bin + tok512.bin;
 *  - save -> load round trips for every weight type, bit for bit, and
 *    quantized files are fixed points of load -> save;
 *  - wmat's Q8_0/Q4_0 block encoders equal a literal transcription of
 *    ggml's reference quantizers;
 *  - hostile files (truncated, huge counts, bad shapes/offsets/types,
 *    duplicates, random byte flips) fail cleanly with the path in the message;
 *  - llama.cpp itself (node-llama-cpp) loads what wmat writes and continues
 *    "Once upon a time" as llama2.c's run.c does. */
#include "support/test_util.h"

#include "io/model_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static wmat_model *load_model(const char *path, int materialize)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = materialize;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static void save_model(wmat_model *m, const char *path, wmat_dtype dt)
{
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = dt;
    TU_OK(wmat_model_save(m, path, &sp));
}

static void assert_same_shape(const wmat_tensor *a, const wmat_tensor *b)
{
    assert_int_equal(a->ndim, b->ndim);
    for (int d = 0; d < a->ndim; d++) assert_int_equal(a->shape[d], b->shape[d]);
}

/* The values of a tensor as f32 (malloc'd). */
static float *tensor_f32(const wmat_tensor *t)
{
    int64_t n = wmat_tensor_nelem(t);
    float *v = malloc((size_t)n * sizeof *v + 1);
    assert_non_null(v);
    TU_OK(wmat_to_f32(v, t->data, t->dtype, (uint64_t)n));
    return v;
}

static void assert_config_equal(const wmat_config *a, const wmat_config *b, int check_seq_len)
{
    assert_int_equal(a->dim, b->dim);
    assert_int_equal(a->hidden_dim, b->hidden_dim);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->head_dim, b->head_dim);
    if (check_seq_len) assert_int_equal(a->seq_len, b->seq_len);
    assert_true(a->rope_theta == b->rope_theta);
    assert_true(a->norm_eps == b->norm_eps);
    assert_int_equal(a->bos_id, b->bos_id);
    assert_int_equal(a->eos_id, b->eos_id);
}

/* llama2.c's tokenizer exporter writes BOS/EOS as "\n<s>\n" / "\n</s>\n";
 * GGUF spells them "<s>" / "</s>". Everything else must match exactly. */
static int same_piece(const char *a, size_t an, const char *b, size_t bn)
{
    if (an == bn && !memcmp(a, b, an)) return 1;
    static const char *const pairs[][2] = {{"<s>", "\n<s>\n"}, {"</s>", "\n</s>\n"}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (an == strlen(pairs[i][j]) && bn == strlen(pairs[i][1 - j]) && !memcmp(a, pairs[i][j], an) &&
                !memcmp(b, pairs[i][1 - j], bn))
                return 1;
    return 0;
}

static void assert_vocab_equal(const wmat_tokenizer *a, const wmat_tokenizer *b)
{
    assert_non_null(a);
    assert_non_null(b);
    int n = wmat_tokenizer_vocab_size(a);
    assert_int_equal(n, wmat_tokenizer_vocab_size(b));
    for (int i = 0; i < n; i++) {
        size_t al = 0, bl = 0;
        const char *ap = wmat_tokenizer_piece(a, i, &al), *bp = wmat_tokenizer_piece(b, i, &bl);
        if (!same_piece(ap, al, bp, bl))
            fail_msg("token %d: piece '%.*s' vs '%.*s'", i, (int)al, ap, (int)bl, bp);
        float as = wmat_tokenizer_score(a, i), bs = wmat_tokenizer_score(b, i);
        if (memcmp(&as, &bs, sizeof as)) fail_msg("token %d: score %g vs %g", i, as, bs);
    }
    assert_int_equal(wmat_tokenizer_bos(a), wmat_tokenizer_bos(b));
    assert_int_equal(wmat_tokenizer_eos(a), wmat_tokenizer_eos(b));
}

/* ------------------------------------------- ggml's reference, transcribed
 * from ggml/src/ggml-impl.h and ggml/src/ggml-quants.c (MIT), kept literal
 * on purpose so that the test does not share code with src/core. */

typedef uint16_t ggml_fp16_t;
#define QK4_0 32
#define QK8_0 32
typedef struct {
    ggml_fp16_t d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
typedef struct {
    ggml_fp16_t d;
    int8_t qs[QK8_0];
} block_q8_0;
#define GGML_MAX(a, b) ((a) > (b) ? (a) : (b))
#define GGML_MIN(a, b) ((a) < (b) ? (a) : (b))

static inline float fp32_from_bits(uint32_t w)
{
    union {
        uint32_t as_bits;
        float as_value;
    } fp32;
    fp32.as_bits = w;
    return fp32.as_value;
}

static inline uint32_t fp32_to_bits(float f)
{
    union {
        float as_value;
        uint32_t as_bits;
    } fp32;
    fp32.as_value = f;
    return fp32.as_bits;
}

static inline float ggml_compute_fp16_to_fp32(ggml_fp16_t h)
{
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized_value = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float magic_bias = 0.5f;
    const float denormalized_value = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? fp32_to_bits(denormalized_value) : fp32_to_bits(normalized_value));
    return fp32_from_bits(result);
}

static inline ggml_fp16_t ggml_compute_fp32_to_fp16(float f)
{
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;

    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) {
        bias = UINT32_C(0x71000000);
    }

    base = fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign);
}
#define GGML_FP32_TO_FP16(x) ggml_compute_fp32_to_fp16(x)
#define GGML_FP16_TO_FP32(x) ggml_compute_fp16_to_fp32(x)

static void quantize_row_q4_0_ref(const float *x, block_q4_0 *y, int64_t k)
{
    static const int qk = QK4_0;
    const int nb = k / qk;
    for (int i = 0; i < nb; i++) {
        float amax = 0.0f; // absolute max
        float max = 0.0f;
        for (int j = 0; j < qk; j++) {
            const float v = x[i * qk + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < qk / 2; ++j) {
            const float x0 = x[i * qk + 0 + j] * id;
            const float x1 = x[i * qk + qk / 2 + j] * id;
            const uint8_t xi0 = GGML_MIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = GGML_MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = xi0;
            y[i].qs[j] |= xi1 << 4;
        }
    }
}

static void quantize_row_q8_0_ref(const float *x, block_q8_0 *y, int64_t k)
{
    const int nb = k / QK8_0;
    for (int i = 0; i < nb; i++) {
        float amax = 0.0f; // absolute max
        for (int j = 0; j < QK8_0; j++) {
            const float v = x[i * QK8_0 + j];
            amax = GGML_MAX(amax, fabsf(v));
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < QK8_0; ++j) {
            const float x0 = x[i * QK8_0 + j] * id;
            y[i].qs[j] = roundf(x0);
        }
    }
}

static void dequantize_row_q4_0(const block_q4_0 *x, float *y, int64_t k)
{
    static const int qk = QK4_0;
    const int nb = k / qk;
    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        for (int j = 0; j < qk / 2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[i * qk + j + 0] = x0 * d;
            y[i * qk + j + qk / 2] = x1 * d;
        }
    }
}

static void dequantize_row_q8_0(const block_q8_0 *x, float *y, int64_t k)
{
    static const int qk = QK8_0;
    const int nb = k / qk;
    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        for (int j = 0; j < qk; ++j) y[i * qk + j] = x[i].qs[j] * d;
    }
}

/* Blocks that probe the corners of the reference: zeros, a lone outlier,
 * a negative extreme, +a/-a ties, exact halves, scales that are fp16
 * subnormals or near fp16's top, and plain Gaussian rows at many scales. */
static float *quant_probe_data(int64_t *n_out)
{
    const int nblocks = 4096;
    float *x = malloc((size_t)nblocks * 32 * sizeof *x);
    assert_non_null(x);
    wmat_rng rng;
    wmat_rng_seed(&rng, 1234);
    for (int b = 0; b < nblocks; b++) {
        float *v = x + (size_t)b * 32;
        const float scale = powf(10.0f, (float)(b % 13) - 8.0f); /* 1e-8 .. 1e4 */
        for (int j = 0; j < 32; j++) v[j] = wmat_rng_normal(&rng) * scale;
        switch (b % 16) {
        case 0: memset(v, 0, 32 * sizeof *v); break;
        case 1: v[7] = 50.0f * scale; break;
        case 2: v[3] = -60.0f * scale; break;
        case 3: v[0] = 3.0f, v[31] = -3.0f; break;
        case 4: v[5] = -3.0f, v[9] = 3.0f; break;
        case 5:
            for (int j = 0; j < 32; j++) v[j] = (float)(j - 16) + 0.5f; /* halves after scaling by 127/15.5 */
            break;
        case 6:
            for (int j = 0; j < 32; j++) v[j] = (float)((j % 17) - 8); /* q4_0: exact multiples of d */
            break;
        case 7: v[11] = 8.0e6f; break; /* q8_0 scale near fp16's largest finite */
        case 8: v[2] = 6.0e-6f; break;
        case 9:
            for (int j = 0; j < 32; j++) v[j] = 1.0f;
            break;
        default: break;
        }
    }
    *n_out = (int64_t)nblocks * 32;
    return x;
}

static void test_quants_match_ggml_reference(void **state)
{
    (void)state;
    assert_int_equal(sizeof(block_q8_0), 34);
    assert_int_equal(sizeof(block_q4_0), 18);
    int64_t n;
    float *x = quant_probe_data(&n);
    const int64_t nb = n / 32;
    block_q8_0 *r8 = malloc((size_t)nb * sizeof *r8);
    block_q4_0 *r4 = malloc((size_t)nb * sizeof *r4);
    unsigned char *w8 = malloc((size_t)nb * 34), *w4 = malloc((size_t)nb * 18);
    float *dr = malloc((size_t)n * sizeof *dr), *dw = malloc((size_t)n * sizeof *dw);
    assert_true(r8 && r4 && w8 && w4 && dr && dw);

    quantize_row_q8_0_ref(x, r8, n);
    wmat__quantize_row_q8_0(x, w8, n);
    quantize_row_q4_0_ref(x, r4, n);
    wmat__quantize_row_q4_0(x, w4, n);
    for (int64_t b = 0; b < nb; b++) {
        if (memcmp(&r8[b], w8 + 34 * b, 34)) fail_msg("q8_0 block %lld differs from ggml's quantize_row_q8_0_ref", (long long)b);
        if (memcmp(&r4[b], w4 + 18 * b, 18)) fail_msg("q4_0 block %lld differs from ggml's quantize_row_q4_0_ref", (long long)b);
    }
    /* The public entry point is the same encoder. */
    unsigned char *p8 = malloc((size_t)nb * 34);
    assert_non_null(p8);
    TU_OK(wmat_from_f32(p8, WMAT_Q8_0, x, (uint64_t)n));
    assert_memory_equal(p8, w8, (size_t)nb * 34);
    free(p8);

    dequantize_row_q8_0(r8, dr, n);
    TU_OK(wmat_to_f32(dw, w8, WMAT_Q8_0, (uint64_t)n));
    assert_memory_equal(dr, dw, (size_t)n * sizeof *dr);
    dequantize_row_q4_0(r4, dr, n);
    TU_OK(wmat_to_f32(dw, w4, WMAT_Q4_0, (uint64_t)n));
    assert_memory_equal(dr, dw, (size_t)n * sizeof *dr);

    /* Finite fp16 conversions agree too (ggml's only differ on NaN payloads). */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        float a = ggml_compute_fp16_to_fp32((uint16_t)h), b = wmat_f16_to_f32((uint16_t)h);
        if (memcmp(&a, &b, 4)) fail_msg("fp16 0x%04x: ggml %g, wmat %g", h, a, b);
    }
    for (int64_t i = 0; i < n; i++) {
        uint16_t a = ggml_compute_fp32_to_fp16(x[i]), b = wmat_f32_to_f16(x[i]);
        if (a != b) fail_msg("fp16 of %a: ggml 0x%04x, wmat 0x%04x", x[i], a, b);
    }
    free(x), free(r8), free(r4), free(w8), free(w4), free(dr), free(dw);
}

/* ------------------------------------------------------ stories260K.gguf */

static void test_load_stories260k_gguf(void **state)
{
    (void)state;
    TU_NEED_DATA(gguf, "models/stories260K.gguf");
    TU_NEED_DATA(bin, "models/stories260K.bin");
    TU_NEED_DATA(tokp, "models/tok512.bin");
    wmat_model *g = load_model(gguf, 0);
    wmat_model *b = load_model(bin, 1);
    assert_int_equal(wmat_model_format(g), WMAT_FMT_GGUF);
    const wmat_config *gc = wmat_model_config(g), *bc = wmat_model_config(b);
    assert_int_equal(gc->dim, 64);
    assert_int_equal(gc->hidden_dim, 172);
    assert_int_equal(gc->n_layers, 5);
    assert_int_equal(gc->n_heads, 8);
    assert_int_equal(gc->n_kv_heads, 4);
    assert_int_equal(gc->vocab_size, 512);
    /* The file says llama.context_length = 2048 where the .bin says 512:
     * the converter that made it did not carry seq_len over. */
    assert_int_equal(gc->seq_len, 2048);
    assert_int_equal(bc->seq_len, 512);
    assert_config_equal(gc, bc, 0);
    /* The GGUF holds its own copy of the classifier; the .bin shares it. */
    assert_int_equal(gc->tied_embeddings, 0);
    assert_int_equal(bc->tied_embeddings, 1);

    int checked = 0;
    for (int i = 0; i < wmat_model_n_tensors(b); i++) {
        wmat_tensor *bt = wmat_model_tensor(b, i);
        wmat_tensor *gt = wmat_model_find(g, bt->name);
        if (!gt) fail_msg("%s missing from the GGUF model", bt->name);
        assert_int_equal(gt->dtype, WMAT_F32);
        assert_false(gt->flags & WMAT_TF_OWNED); /* points into the mapping */
        assert_same_shape(gt, bt);
        assert_int_equal(gt->nbytes, bt->nbytes);
        if (memcmp(gt->data, bt->data, bt->nbytes)) fail_msg("%s differs from stories260K.bin", bt->name);
        checked++;
    }
    assert_int_equal(checked, 3 + 9 * 5 - 1);
    wmat_tensor *cls = wmat_model_classifier(g), *emb = wmat_model_tok_embeddings(b);
    assert_string_equal(cls->name, "lm_head.weight");
    assert_same_shape(cls, emb);
    assert_memory_equal(cls->data, emb->data, emb->nbytes);
    assert_int_equal(wmat_model_n_tensors(g), 3 + 9 * 5);

    wmat_tokenizer *ref = NULL;
    TU_OK(wmat_tokenizer_load_llama2c(&ref, tokp, 512));
    wmat_tokenizer *gt = wmat_model_tokenizer(g);
    assert_vocab_equal(gt, ref);
    assert_int_equal(gc->bos_id, 1);
    assert_int_equal(gc->eos_id, 2);
    /* Types as the file has them. */
    assert_int_equal(wmat_tokenizer_type(gt, 0), 2);
    assert_int_equal(wmat_tokenizer_type(gt, 1), 3);
    assert_int_equal(wmat_tokenizer_type(gt, 2), 3);
    assert_int_equal(wmat_tokenizer_type(gt, 3), 6);
    assert_int_equal(wmat_tokenizer_type(gt, 511), 1);
    wmat_tokenizer_free(ref);

    /* Materializing leaves the (already f32) weights as they were. */
    TU_OK(wmat_model_materialize(g));
    wmat_tensor *q = wmat_model_linear(g, 2, WMAT_LIN_Q), *qb = wmat_model_linear(b, 2, WMAT_LIN_Q);
    assert_memory_equal(q->data, qb->data, qb->nbytes);
    wmat_model_free(g);
    wmat_model_free(b);
}

/* ------------------------------------------------------------- round trips */

static int is_quant(wmat_dtype dt) { return dt == WMAT_Q8_0 || dt == WMAT_Q4_0; }

/* The type wmat stores a tensor as when asked for `dt`. */
static wmat_dtype expected_dtype(const wmat_tensor *t, wmat_dtype dt)
{
    if (t->ndim == 1) return WMAT_F32;
    if (is_quant(dt) && t->shape[t->ndim - 1] % 32) return WMAT_F16;
    return dt;
}

/* Save `src` (materialized) as `dt`, load it back, and check every tensor's
 * stored bytes equal wmat_from_f32 of the source, its values
 * wmat_to_f32(wmat_from_f32(x)), and that load -> save -> load reproduces
 * the stored bytes. */
static void check_roundtrip(wmat_model *src, wmat_dtype dt, const char *tag)
{
    char name[96], name2[96];
    snprintf(name, sizeof name, "%s_%s.gguf", tag, wmat_dtype_info(dt)->name);
    snprintf(name2, sizeof name2, "%s_%s_again.gguf", tag, wmat_dtype_info(dt)->name);
    char path[512], path2[512];
    snprintf(path, sizeof path, "%s", tu_tmp(name));
    snprintf(path2, sizeof path2, "%s", tu_tmp(name2));
    save_model(src, path, dt);
    wmat_model *raw = load_model(path, 0);

    assert_config_equal(wmat_model_config(raw), wmat_model_config(src), 1);
    assert_int_equal(wmat_model_config(raw)->tied_embeddings, wmat_model_config(src)->tied_embeddings);
    assert_int_equal(wmat_model_n_tensors(raw), wmat_model_n_tensors(src));
    int fallbacks = 0;
    for (int i = 0; i < wmat_model_n_tensors(src); i++) {
        const wmat_tensor *s = wmat_model_tensor(src, i);
        const wmat_tensor *r = wmat_model_find(raw, s->name);
        if (!r) fail_msg("%s: %s missing after reload", path, s->name);
        assert_same_shape(r, s);
        wmat_dtype edt = expected_dtype(s, dt);
        if (edt != dt && s->ndim == 2) fallbacks++;
        if (r->dtype != edt) fail_msg("%s: %s stored as %s, expected %s", path, s->name, wmat_dtype_info(r->dtype)->name,
                                      wmat_dtype_info(edt)->name);
        int64_t n = wmat_tensor_nelem(s);
        size_t nb = wmat_dtype_bytes(edt, (uint64_t)n);
        assert_int_equal(r->nbytes, nb);
        unsigned char *enc = malloc(nb);
        float *want = malloc((size_t)n * sizeof *want);
        assert_true(enc && want);
        TU_OK(wmat_from_f32(enc, edt, s->data, (uint64_t)n));
        if (memcmp(enc, r->data, nb)) fail_msg("%s: %s: stored bytes differ from wmat_from_f32", path, s->name);
        TU_OK(wmat_to_f32(want, enc, edt, (uint64_t)n));
        float *got = tensor_f32(r);
        if (memcmp(want, got, (size_t)n * sizeof *got)) fail_msg("%s: %s: values differ", path, s->name);
        if (edt == WMAT_F32 && memcmp(got, s->data, (size_t)n * sizeof *got)) fail_msg("%s: %s: f32 not bit-exact", path, s->name);
        free(enc), free(want), free(got);
    }
    if (is_quant(dt)) print_message("%s: %d matrices fell back to f16 (rows not a multiple of 32)\n", path, fallbacks);
    if (wmat_model_tokenizer(src)) assert_vocab_equal(wmat_model_tokenizer(raw), wmat_model_tokenizer(src));

    /* Idempotence: the dequantized model written again as the same type. */
    wmat_model *deq = load_model(path, 1);
    save_model(deq, path2, dt);
    wmat_model *again = load_model(path2, 0);
    for (int i = 0; i < wmat_model_n_tensors(raw); i++) {
        const wmat_tensor *a = wmat_model_tensor(raw, i);
        const wmat_tensor *b = wmat_model_find(again, a->name);
        assert_non_null(b);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->nbytes, b->nbytes);
        if (memcmp(a->data, b->data, a->nbytes)) fail_msg("%s: %s: not a fixed point of load -> save", path2, a->name);
    }
    wmat_model_free(again);
    wmat_model_free(deq);
    wmat_model_free(raw);
}

static const wmat_dtype g_all_types[] = {WMAT_F32, WMAT_F16, WMAT_BF16, WMAT_Q8_0, WMAT_Q4_0};

/* A model with random weights (no shared data needed): hidden 80 so that
 * the down projection's rows exercise the f16 fallback, untied classifier,
 * GQA, non-default theta/eps and a vocabulary with spaces and byte tokens. */
static wmat_model *synthetic_model(int tied)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = 64, c.hidden_dim = 80, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 300, c.seq_len = 128;
    c.rope_theta = 500000.0f, c.norm_eps = 1e-6f, c.tied_embeddings = tied, c.bos_id = 1, c.eos_id = 2;
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &c));
    wmat_rng rng;
    wmat_rng_seed(&rng, 42);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *v = t->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) v[j] = wmat_rng_normal(&rng) * (t->ndim == 1 ? 1.0f : 0.05f);
    }
    const char *pieces[300];
    size_t lens[300];
    float scores[300];
    char store[300][16];
    for (int i = 0; i < 300; i++) {
        if (i == 0) snprintf(store[i], sizeof store[i], "<unk>");
        else if (i == 1) snprintf(store[i], sizeof store[i], "\n<s>\n");
        else if (i == 2) snprintf(store[i], sizeof store[i], "\n</s>\n");
        else if (i < 3 + 256) snprintf(store[i], sizeof store[i], "<0x%02X>", i - 3);
        else snprintf(store[i], sizeof store[i], "%st%d", i % 2 ? " " : "", i);
        pieces[i] = store[i];
        lens[i] = strlen(store[i]);
        scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
    }
    wmat_tokenizer *tok = NULL;
    TU_OK(wmat_tokenizer_from_vocab(&tok, 300, pieces, lens, scores, NULL, 1, 2));
    wmat_model_set_tokenizer(m, tok);
    return m;
}

static void test_roundtrip_synthetic(void **state)
{
    (void)state;
    for (int tied = 0; tied < 2; tied++) {
        wmat_model *m = synthetic_model(tied);
        for (size_t i = 0; i < sizeof g_all_types / sizeof g_all_types[0]; i++)
            check_roundtrip(m, g_all_types[i], tied ? "synth_tied" : "synth");
        wmat_model_free(m);
    }
}

static void test_roundtrip_stories260k(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/stories260K.bin");
    wmat_model *m = load_model(bin, 1);
    assert_non_null(wmat_model_tokenizer(m));
    for (size_t i = 0; i < sizeof g_all_types / sizeof g_all_types[0]; i++) check_roundtrip(m, g_all_types[i], "stories260K");
    wmat_model_free(m);
}

/* GGUF -> wmat -> GGUF keeps the weights, the vocabulary and its types. */
static void test_resave_stories260k_gguf(void **state)
{
    (void)state;
    TU_NEED_DATA(gguf, "models/stories260K.gguf");
    wmat_model *a = load_model(gguf, 1);
    const char *out = tu_tmp("stories260K_resaved.gguf");
    save_model(a, out, WMAT_F32);
    wmat_model *b = load_model(out, 0);
    assert_config_equal(wmat_model_config(b), wmat_model_config(a), 1);
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        const wmat_tensor *x = wmat_model_tensor(a, i);
        const wmat_tensor *y = wmat_model_find(b, x->name);
        assert_non_null(y);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    const wmat_tokenizer *ta = wmat_model_tokenizer(a), *tb = wmat_model_tokenizer(b);
    assert_vocab_equal(ta, tb);
    for (int i = 0; i < wmat_tokenizer_vocab_size(ta); i++) {
        size_t al, bl;
        const char *ap = wmat_tokenizer_piece(ta, i, &al), *bp = wmat_tokenizer_piece(tb, i, &bl);
        assert_int_equal(al, bl);
        assert_memory_equal(ap, bp, al);
        assert_int_equal(wmat_tokenizer_type(ta, i), wmat_tokenizer_type(tb, i));
    }
    wmat_model_free(a);
    wmat_model_free(b);
}

/* A load with check_finite finds a NaN or Inf of a weight kept in its stored
 * type from the bits: in f16 and bf16 values and in a Q8_0 / Q4_0 block's
 * scale (located in the file by the bytes of its first block). */
static int load_checked(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.keep_stored = 1;
    lp.check_finite = 1;
    wmat_model *m = NULL;
    const int rc = wmat_model_load(&m, path, &lp);
    wmat_model_free(m);
    return rc;
}

static void test_nonfinite_stored(void **state)
{
    (void)state;
    static const wmat_dtype dts[] = {WMAT_F16, WMAT_BF16, WMAT_Q8_0, WMAT_Q4_0};
    for (int d = 0; d < 4; d++) {
        for (int inf = 0; inf < 2; inf++) {
            wmat_model *m = synthetic_model(1);
            wmat_tensor *v = wmat_model_linear(m, 1, WMAT_LIN_V);
            const char *out = tu_tmp("nonfinite.gguf");
            save_model(m, out, dts[d]);
            assert_int_equal(load_checked(out), WMAT_OK);
            /* the bytes of v's second block of 32 as the file holds them */
            const size_t bb = wmat_dtype_bytes(dts[d], 32);
            unsigned char blk[64];
            TU_OK(wmat_from_f32(blk, dts[d], (const float *)v->data + 32, 32));
            char *data;
            size_t len;
            TU_OK(wmat_read_file(out, &data, &len));
            unsigned char *at = memmem(data, len, blk, bb);
            assert_non_null(at);
            /* first half of the block (an f16/bf16 value or the block scale) -> NaN or Inf */
            const uint16_t bad = dts[d] == WMAT_BF16 ? (inf ? 0x7F80 : 0x7FC1) : (inf ? 0xFC00 : 0x7E01);
            memcpy(at, &bad, 2);
            assert_int_equal(tu_write_file(out, data, len), 0);
            assert_int_equal(load_checked(out), WMAT_ERR_NUMERIC);
            assert_non_null(strstr(wmat_last_error(), "non-finite"));
            assert_non_null(strstr(wmat_last_error(), "column 32"));
            free(data);
            wmat_model_free(m);
        }
    }
}

static void test_save_errors(void **state)
{
    (void)state;
    wmat_model *m = synthetic_model(1);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = WMAT_I32;
    const char *out = tu_tmp("bad_type.gguf");
    int rc = wmat_model_save(m, out, &sp);
    assert_int_equal(rc, WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), out));
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
    /* A directory that does not exist: an I/O error, nothing left behind. */
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.gguf", tu_tmpdir());
    sp.dtype = WMAT_F16;
    rc = wmat_model_save(m, missing, &sp);
    assert_int_equal(rc, WMAT_ERR_IO);
    assert_non_null(strstr(wmat_last_error(), missing));
    /* NaN cannot be block-quantized; f16 keeps it. */
    ((float *)wmat_model_linear(m, 1, WMAT_LIN_V)->data)[5] = NAN;
    const char *nan_out = tu_tmp("nan.gguf");
    sp.dtype = WMAT_Q8_0;
    rc = wmat_model_save(m, nan_out, &sp);
    assert_int_equal(rc, WMAT_ERR_NUMERIC);
    assert_non_null(strstr(wmat_last_error(), nan_out));
    assert_int_not_equal(stat(nan_out, &st), 0);
    sp.dtype = WMAT_F16;
    TU_OK(wmat_model_save(m, nan_out, &sp));
    wmat_model *back = load_model(nan_out, 1);
    assert_true(isnan(((float *)wmat_model_linear(back, 1, WMAT_LIN_V)->data)[5]));
    wmat_model_free(back);
    wmat_model_free(m);
}

/* ---------------------------------------------------------- hostile files */

typedef struct {
    unsigned char *b;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->b = realloc(b->b, b->cap);
        assert_non_null(b->b);
    }
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(buf_t *b, float v) { put(b, &v, 4); }
static void put_str(buf_t *b, const char *s) { put_u64(b, strlen(s)), put(b, s, strlen(s)); }
static void put_pad(buf_t *b, size_t a)
{
    static const unsigned char z[64];
    put(b, z, (a - b->n % a) % a);
}

/* Ways to break a small valid file. */
enum {
    H_VALID, H_BAD_MAGIC, H_VERSION1, H_VERSION4, H_HUGE_NT, H_HUGE_NKV, H_HUGE_KEYLEN, H_HUGE_STRVAL, H_HUGE_ARRAY,
    H_HUGE_STRARRAY, H_UNKNOWN_VTYPE, H_UNKNOWN_ATYPE, H_NESTED_ARRAY, H_DUP_KEY, H_ALIGN_0, H_ALIGN_NPOW2, H_NDIMS5,
    H_NDIMS0, H_OFFSET_BEYOND, H_SIZE_BEYOND, H_UNKNOWN_GTYPE, H_UNSUPP_GTYPE, H_OVERFLOW_SHAPE, H_NE_ZERO, H_NE_HUGE,
    H_MISALIGNED, H_DUP_TENSOR, H_DUP_ALIAS, H_Q8_ROW, H_NAME_NUL, H_NAME_LONG, H_NAME_EMPTY, H_LAYER_RANGE,
    H_MISSING_KEY, H_KEY_TYPE, H_KEY_RANGE, H_ARCH, H_MISSING_TENSOR, H_SHAPE_MISMATCH, H_TOKENS_COUNT, H_TOKENS_TYPE,
    H_SCORES_COUNT, H_HEADS, H_ROPE_DIM, H_EMPTY, H_COUNT
};
static const char *const g_hnames[H_COUNT] = {
    "valid", "bad magic", "version 1", "version 4", "huge tensor count", "huge key count", "huge key length",
    "huge string value", "huge array", "huge string array", "unknown value type", "unknown array type",
    "nested array", "duplicate key", "alignment 0", "alignment 48", "n_dims 5", "n_dims 0", "offset beyond the file",
    "size beyond the file", "unknown ggml type", "unsupported ggml type", "overflowing shape", "zero dimension",
    "dimension > INT64_MAX", "misaligned offset", "duplicate tensor", "tensor under two names", "q8_0 row of 17",
    "NUL in a name", "name too long", "empty name", "layer out of range", "missing key", "key of the wrong type",
    "key out of range", "architecture gpt2", "missing tensor", "shape mismatch", "token count mismatch",
    "tokens not strings", "score count mismatch", "heads do not divide dim", "partial rotary", "empty file",
};

/* Element j of tiny tensor i: multiples of 1/8, exact in f16. */
static float tiny_value(size_t j, int i) { return (float)((int)((j * 7 + (size_t)i) % 17) - 8) * 0.125f; }

/* Deterministic data: f32/f16 from tiny_value, q8_0 blocks with scale 0.5
 * and codes j - 16. */
static void tiny_values(unsigned char *d, uint32_t type, size_t bytes, int i)
{
    if (type == 0)
        for (size_t j = 0; j < bytes / 4; j++) {
            float v = tiny_value(j, i);
            memcpy(d + 4 * j, &v, 4);
        }
    if (type == 1)
        for (size_t j = 0; j < bytes / 2; j++) {
            uint16_t h = wmat_f32_to_f16(tiny_value(j, i));
            memcpy(d + 2 * j, &h, 2);
        }
    if (type == 8)
        for (size_t b = 0; b < bytes / 34; b++) {
            d[34 * b] = 0x00, d[34 * b + 1] = 0x38; /* fp16 0.5 */
            for (int j = 0; j < 32; j++) d[34 * b + 2 + j] = (unsigned char)(int8_t)(j - 16);
        }
}

typedef struct {
    char name[160];
    size_t name_len;
    uint32_t ndim;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
    size_t bytes;
} tspec;

/* A 1-layer llama (dim 32, hidden 32, 2 heads, 1 kv head, vocab 4, tied)
 * with a vocabulary, mutated according to `hc`. `version`, `align` and
 * `wtype` (the ggml type of the q projection: 0 f32, 1 f16, 8 q8_0) vary
 * the valid file. */
static void build_tiny_ex(buf_t *out, int hc, uint32_t version, uint32_t align, uint32_t wtype)
{
    enum { DIM = 32, HID = 32, VOC = 4 };
    out->n = 0;
    if (hc == H_EMPTY) return;
    buf_t kv = {0};
    uint64_t n_kv = 0;
#define KEY(k, t) (put_str(&kv, k), put_u32(&kv, t), n_kv++)
    KEY("general.architecture", 8), put_str(&kv, hc == H_ARCH ? "gpt2" : "llama");
    if (hc == H_HUGE_KEYLEN) put_u64(&kv, UINT64_MAX - 3), put(&kv, "general.name", 12), put_u32(&kv, 8), put_str(&kv, "x"), n_kv++;
    KEY("general.name", 8), put_str(&kv, "tiny");
    if (hc == H_DUP_KEY) KEY("general.name", 8), put_str(&kv, "tiny again");
    if (hc != H_MISSING_KEY) {
        if (hc == H_KEY_TYPE) KEY("llama.embedding_length", 8), put_str(&kv, "32");
        else KEY("llama.embedding_length", 4), put_u32(&kv, DIM);
    }
    KEY("llama.feed_forward_length", 4), put_u32(&kv, HID);
    if (hc == H_KEY_RANGE) KEY("llama.block_count", 10), put_u64(&kv, (uint64_t)1 << 40);
    else KEY("llama.block_count", 4), put_u32(&kv, 1);
    KEY("llama.attention.head_count", 4), put_u32(&kv, hc == H_HEADS ? 3 : 2);
    KEY("llama.attention.head_count_kv", 4), put_u32(&kv, 1);
    KEY("llama.context_length", 4), put_u32(&kv, 16);
    KEY("llama.attention.layer_norm_rms_epsilon", 6), put_f32(&kv, 1e-5f);
    if (hc == H_ROPE_DIM) KEY("llama.rope.dimension_count", 4), put_u32(&kv, 8);
    if (hc == H_ALIGN_0 || hc == H_ALIGN_NPOW2) KEY("general.alignment", 4), put_u32(&kv, hc == H_ALIGN_0 ? 0 : 48);
    else if (align != 32) KEY("general.alignment", 4), put_u32(&kv, align);
    if (hc == H_HUGE_STRVAL) KEY("general.description", 8), put_u64(&kv, (uint64_t)1 << 60), put(&kv, "abc", 3);
    if (hc == H_HUGE_ARRAY) KEY("general.junk", 9), put_u32(&kv, 4), put_u64(&kv, (uint64_t)1 << 61);
    if (hc == H_HUGE_STRARRAY) KEY("general.junk", 9), put_u32(&kv, 8), put_u64(&kv, (uint64_t)1 << 61);
    if (hc == H_UNKNOWN_VTYPE) KEY("general.junk", 13), put_u32(&kv, 0);
    if (hc == H_UNKNOWN_ATYPE) KEY("general.junk", 9), put_u32(&kv, 77), put_u64(&kv, 1), put_u32(&kv, 0);
    if (hc == H_NESTED_ARRAY) KEY("general.junk", 9), put_u32(&kv, 9), put_u64(&kv, 1), put_u32(&kv, 4), put_u64(&kv, 1), put_u32(&kv, 5);
    KEY("tokenizer.ggml.model", 8), put_str(&kv, "llama");
    static const char *const toks[VOC] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a"};
    if (hc == H_TOKENS_TYPE) {
        KEY("tokenizer.ggml.tokens", 9), put_u32(&kv, 4), put_u64(&kv, VOC);
        for (int i = 0; i < VOC; i++) put_u32(&kv, (uint32_t)i);
    } else {
        int nt = hc == H_TOKENS_COUNT ? VOC - 1 : VOC;
        KEY("tokenizer.ggml.tokens", 9), put_u32(&kv, 8), put_u64(&kv, (uint64_t)nt);
        for (int i = 0; i < nt; i++) put_str(&kv, toks[i]);
    }
    int ns = hc == H_SCORES_COUNT ? VOC + 1 : VOC;
    KEY("tokenizer.ggml.scores", 9), put_u32(&kv, 6), put_u64(&kv, (uint64_t)ns);
    for (int i = 0; i < ns; i++) put_f32(&kv, -(float)i);
    KEY("tokenizer.ggml.token_type", 9), put_u32(&kv, 5), put_u64(&kv, VOC);
    static const int32_t types[VOC] = {2, 3, 3, 1};
    for (int i = 0; i < VOC; i++) put_u32(&kv, (uint32_t)types[i]);
    KEY("tokenizer.ggml.bos_token_id", 4), put_u32(&kv, 1);
    KEY("tokenizer.ggml.eos_token_id", 4), put_u32(&kv, 2);
#undef KEY

    tspec ts[16];
    int nt = 0;
#define TENSOR(nm, d0, d1)                                                              \
    do {                                                                                \
        memset(&ts[nt], 0, sizeof ts[nt]);                                              \
        snprintf(ts[nt].name, sizeof ts[nt].name, "%s", nm);                           \
        ts[nt].name_len = strlen(nm);                                                   \
        ts[nt].ndim = (d1) ? 2 : 1;                                                     \
        ts[nt].ne[0] = d0, ts[nt].ne[1] = d1;                                           \
        nt++;                                                                           \
    } while (0)
    TENSOR("token_embd.weight", DIM, VOC);
    TENSOR("output_norm.weight", DIM, 0);
    TENSOR("blk.0.attn_q.weight", DIM, DIM);
    ts[nt - 1].type = wtype;
    TENSOR("blk.0.attn_k.weight", DIM, 16);
    TENSOR("blk.0.attn_v.weight", DIM, 16);
    TENSOR("blk.0.attn_output.weight", DIM, DIM);
    TENSOR("blk.0.attn_norm.weight", DIM, 0);
    TENSOR("blk.0.ffn_gate.weight", DIM, HID);
    TENSOR("blk.0.ffn_down.weight", HID, DIM);
    if (hc != H_MISSING_TENSOR) TENSOR("blk.0.ffn_up.weight", DIM, HID);
    TENSOR("blk.0.ffn_norm.weight", DIM, 0);
    if (hc == H_DUP_ALIAS) TENSOR("model.embed_tokens.weight", DIM, VOC);
    if (hc == H_Q8_ROW) {
        TENSOR("extra.weight", 17, 0);
        ts[nt - 1].type = 8;
    }
    if (hc == H_DUP_TENSOR) snprintf(ts[3].name, sizeof ts[3].name, "%s", ts[2].name);
    if (hc == H_LAYER_RANGE) snprintf(ts[2].name, sizeof ts[2].name, "blk.3.attn_q.weight");
    if (hc == H_SHAPE_MISMATCH) ts[2].ne[1] = 8;
    if (hc == H_NAME_LONG) memset(ts[5].name, 'x', 150), ts[5].name[150] = '\0';
    for (int i = 0; i < nt; i++) ts[i].name_len = strlen(ts[i].name);
    if (hc == H_NAME_NUL) ts[4].name[3] = '\0';
    if (hc == H_NAME_EMPTY) ts[4].name_len = 0;
    /* Offsets and data, 32-aligned like llama.cpp's files; nothing after
     * the last tensor, so any cut of the file loses data. */
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        uint64_t n = ts[i].ne[0] * (ts[i].ne[1] ? ts[i].ne[1] : 1);
        ts[i].bytes = ts[i].type == 8 ? (size_t)(n / 32 * 34) : ts[i].type == 1 ? (size_t)n * 2 : (size_t)n * 4;
        off = (off + align - 1) / align * align;
        ts[i].offset = off;
        off += ts[i].bytes;
    }
    if (hc == H_NDIMS5) ts[1].ndim = 5, ts[1].ne[1] = ts[1].ne[2] = ts[1].ne[3] = ts[1].ne[4] = 1;
    if (hc == H_NDIMS0) ts[1].ndim = 0;
    if (hc == H_OFFSET_BEYOND) ts[nt - 1].offset = (uint64_t)1 << 40;
    if (hc == H_SIZE_BEYOND) ts[nt - 1].ne[0] = 1 << 20;
    if (hc == H_UNKNOWN_GTYPE) ts[1].type = 1234;
    if (hc == H_UNSUPP_GTYPE) ts[1].type = 12;
    if (hc == H_OVERFLOW_SHAPE) ts[0].ndim = 3, ts[0].ne[0] = ts[0].ne[1] = ts[0].ne[2] = (uint64_t)1 << 32;
    if (hc == H_NE_ZERO) ts[6].ne[0] = 0;
    if (hc == H_NE_HUGE) ts[6].ne[0] = (uint64_t)1 << 63;
    if (hc == H_MISALIGNED) ts[1].offset += 4;

    put(out, hc == H_BAD_MAGIC ? "GGUG" : "GGUF", 4);
    put_u32(out, hc == H_VERSION1 ? 1 : hc == H_VERSION4 ? 4 : version);
    put_u64(out, hc == H_HUGE_NT ? (uint64_t)1 << 62 : (uint64_t)nt);
    put_u64(out, hc == H_HUGE_NKV ? UINT64_MAX : n_kv);
    put(out, kv.b, kv.n);
    free(kv.b);
    for (int i = 0; i < nt; i++) {
        put_u64(out, ts[i].name_len);
        put(out, ts[i].name, ts[i].name_len);
        put_u32(out, ts[i].ndim);
        for (uint32_t d = 0; d < ts[i].ndim; d++) put_u64(out, ts[i].ne[d]);
        put_u32(out, ts[i].type);
        put_u64(out, ts[i].offset);
    }
    put_pad(out, align);
    size_t data = out->n;
    for (int i = 0; i < nt; i++) {
        while (out->n < data + (size_t)((ts[i].offset + align - 1) / align * align) && out->n < data + off) put(out, "", 1);
        unsigned char *d = calloc(1, ts[i].bytes + 1);
        assert_non_null(d);
        tiny_values(d, ts[i].type, ts[i].bytes, i);
        size_t room = data + off > out->n ? data + off - out->n : 0;
        put(out, d, ts[i].bytes < room ? ts[i].bytes : room);
        free(d);
    }
#undef TENSOR
}

static void build_tiny(buf_t *out, int hc) { build_tiny_ex(out, hc, 3, 32, 0); }

/* Load with the GGUF reader; it must fail with `path` in the message. */
static void expect_load_error(const char *path, const char *what)
{
    wmat_model *m = (wmat_model *)(uintptr_t)1;
    wmat_clear_error();
    int rc = wmat__gguf_load(&m, path, NULL);
    if (rc == WMAT_OK) fail_msg("%s: loaded although it is broken (%s)", path, what);
    assert_null(m);
    if (!strstr(wmat_last_error(), path)) fail_msg("%s (%s): message lacks the path: %s", path, what, wmat_last_error());
}

/* Hand-made valid files (not from wmat's writer): v2 and v3, alignments
 * 32 and 64, the q projection stored as f32, f16 or q8_0. */
static void test_tiny_valid(void **state)
{
    (void)state;
    static const struct {
        uint32_t version, align, wtype;
    } variants[] = {{3, 32, 0}, {2, 32, 0}, {3, 64, 0}, {3, 32, 1}, {3, 32, 8}, {2, 64, 8}};
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        buf_t b = {0};
        build_tiny_ex(&b, H_VALID, variants[v].version, variants[v].align, variants[v].wtype);
        const char *path = tu_tmp("tiny.gguf");
        assert_int_equal(tu_write_file(path, b.b, b.n), 0);
        wmat_model *m = NULL;
        TU_OK(wmat__gguf_load(&m, path, NULL));
        const wmat_config *c = wmat_model_config(m);
        assert_int_equal(c->dim, 32);
        assert_int_equal(c->hidden_dim, 32);
        assert_int_equal(c->n_layers, 1);
        assert_int_equal(c->n_heads, 2);
        assert_int_equal(c->n_kv_heads, 1);
        assert_int_equal(c->vocab_size, 4);
        assert_int_equal(c->seq_len, 16);
        assert_int_equal(c->tied_embeddings, 1);
        assert_int_equal(c->head_dim, 16);
        size_t len;
        const char *p = wmat_tokenizer_piece(wmat_model_tokenizer(m), 3, &len);
        assert_int_equal(len, 2);
        assert_memory_equal(p, " a", 2); /* U+2581 is a space inside wmat */
        wmat_tensor *q = wmat_model_linear(m, 0, WMAT_LIN_Q);
        static const wmat_dtype dts[9] = {[0] = WMAT_F32, [1] = WMAT_F16, [8] = WMAT_Q8_0};
        assert_int_equal(q->dtype, dts[variants[v].wtype]);
        TU_OK(wmat_model_materialize(m));
        /* GGUF ne = {in, out}: element (r, c) of the wmat matrix is flat index r * in + c. */
        const float *qv = q->data;
        for (int j = 0; j < 32 * 32; j++) {
            float want = variants[v].wtype == 8 ? (float)(j % 32 - 16) * 0.5f : tiny_value((size_t)j, 2);
            if (qv[j] != want) fail_msg("variant %zu: q[%d] = %g, expected %g", v, j, qv[j], want);
        }
        const float *nv = wmat_model_final_norm(m)->data;
        for (int j = 0; j < 32; j++) assert_true(nv[j] == tiny_value((size_t)j, 1));
        wmat_model_free(m);
        free(b.b);
    }
}

static void test_hostile_cases(void **state)
{
    (void)state;
    for (int hc = 1; hc < H_COUNT; hc++) {
        buf_t b = {0};
        build_tiny(&b, hc);
        char name[64];
        snprintf(name, sizeof name, "hostile_%02d.gguf", hc);
        const char *path = tu_tmp(name);
        assert_int_equal(tu_write_file(path, b.b ? (const void *)b.b : "", b.n), 0);
        expect_load_error(path, g_hnames[hc]);
        print_message("  %-24s -> %s\n", g_hnames[hc], wmat_last_error());
        free(b.b);
    }
}

static void test_truncated(void **state)
{
    (void)state;
    buf_t b = {0};
    build_tiny(&b, H_VALID);
    const char *path = tu_tmp("cut.gguf");
    /* Every cut inside the header and the first tensors, then a sample. */
    size_t cuts = 0;
    for (size_t cut = 0; cut < b.n; cut += cut < 2048 ? 1 : 37) {
        assert_int_equal(tu_write_file(path, b.b, cut), 0);
        expect_load_error(path, "truncated");
        cuts++;
    }
    assert_int_equal(tu_write_file(path, b.b, b.n - 1), 0);
    expect_load_error(path, "truncated by one byte");
    print_message("  %zu cut points of a %zu-byte file rejected\n", cuts + 1, b.n);
    free(b.b);
}

/* Random byte flips in the header: whatever happens, no crash, and a
 * failure names the file (ASan/UBSan builds turn a bad read into a failure). */
static void test_byte_flips(void **state)
{
    (void)state;
    buf_t b = {0};
    build_tiny(&b, H_VALID);
    const char *path = tu_tmp("flip.gguf");
    unsigned char *m = malloc(b.n);
    assert_non_null(m);
    wmat_rng rng;
    wmat_rng_seed(&rng, 7);
    int ok = 0, failed = 0;
    size_t header = 0;
    {
        /* The data section starts at the first tensor's data; flips there only change weights. */
        header = b.n;
        for (size_t i = 0; i + 4 < b.n; i++)
            if (!memcmp(b.b + i, "blk.0.ffn_norm.weight", 21)) header = i + 64;
        if (header > b.n) header = b.n;
    }
    for (int it = 0; it < 3000; it++) {
        memcpy(m, b.b, b.n);
        int flips = 1 + (int)(wmat_rng_u64(&rng) % 4);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t)(wmat_rng_u64(&rng) % header);
            uint64_t r = wmat_rng_u64(&rng);
            m[at] = (r & 0x100) ? (unsigned char)r : (unsigned char)(m[at] ^ (1u << (r % 8)));
        }
        assert_int_equal(tu_write_file(path, m, b.n), 0);
        wmat_model *mm = NULL;
        int rc = wmat__gguf_load(&mm, path, NULL);
        if (rc == WMAT_OK) {
            TU_OK(wmat_model_materialize(mm));
            wmat_model_free(mm);
            ok++;
        } else {
            assert_null(mm);
            if (!strstr(wmat_last_error(), path)) fail_msg("message lacks the path: %s", wmat_last_error());
            failed++;
        }
    }
    print_message("  byte flips: %d loaded, %d rejected\n", ok, failed);
    free(m);
    free(b.b);
}

#include "llamacpp.h"

/* llama2.c's greedy continuation of "Once upon a time" (after the prompt). */
static char *golden_continuation(void)
{
    const char *g = tu_data("golden/stories260K_greedy.txt");
    if (!g) return NULL;
    char *all = NULL;
    size_t len = 0;
    TU_OK(wmat_read_file(g, &all, &len));
    const char *hdr = strstr(all, "### prompt: Once upon a time");
    assert_non_null(hdr);
    const char *body = strchr(hdr, '\n');
    assert_non_null(body);
    body++;
    const char *end = strstr(body, "\n### ");
    size_t n = end ? (size_t)(end - body) : strlen(body);
    assert_true(n > 16 && !strncmp(body, "Once upon a time", 16));
    char *c = malloc(n - 16 + 1);
    memcpy(c, body + 16, n - 16);
    c[n - 16] = '\0';
    free(all);
    return c;
}

static void test_llamacpp_peer(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/stories260K.bin");
    TU_NEED_DATA(gguf_src, "models/stories260K.gguf");
    char dir[1024];
    const char *why = NULL;
    if (!llamacpp_script(dir, sizeof dir, &why)) {
        print_message("SKIP: llama.cpp peer check: %s\n", why);
        skip();
        return;
    }
    char *golden = golden_continuation();
    if (!golden) {
        print_message("SKIP: golden/stories260K_greedy.txt not found\n");
        skip();
        return;
    }
    wmat_model *m = load_model(bin, 1);
    wmat_model *mg = load_model(gguf_src, 1);
    static const struct {
        wmat_dtype dt;
        int from_gguf;
        int exact;
    } runs[] = {{WMAT_F32, 0, 1}, {WMAT_F32, 1, 1}, {WMAT_Q8_0, 0, 0}, {WMAT_F16, 0, 0}, {WMAT_BF16, 0, 0}, {WMAT_Q4_0, 0, 0}};
    char *f32_text = NULL;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "peer_%s%s.gguf", runs[i].from_gguf ? "fromgguf_" : "", wmat_dtype_info(runs[i].dt)->name);
        char path[512];
        snprintf(path, sizeof path, "%s", tu_tmp(name));
        save_model(runs[i].from_gguf ? mg : m, path, runs[i].dt);
        llamacpp_result r;
        int rc = llamacpp_greedy(path, "Once upon a time", 40, &r, &why);
        if (rc != 0) fail_msg("llama.cpp could not run %s:\n%s", path, r.raw ? r.raw : "(no output)");
        print_message("  llama.cpp on %s: %zu tokens: \"%s\"\n", name, r.n_tokens, r.text);
        assert_true(r.n_tokens > 0 && strlen(r.text) > 0);
        if (runs[i].exact) {
            if (strlen(r.text) < 40 || strncmp(golden, r.text, strlen(r.text)))
                fail_msg("llama.cpp's greedy text on %s is not llama2.c's:\n  llama.cpp: %s\n  llama2.c:  %.*s", name, r.text,
                         (int)strlen(r.text), golden);
            if (!f32_text) f32_text = strdup(r.text);
        } else if (f32_text) {
            size_t k = 0;
            while (r.text[k] && r.text[k] == f32_text[k]) k++;
            print_message("    (%zu leading characters as with f32)\n", k);
        }
        llamacpp_result_free(&r);
    }
    free(f32_text);
    free(golden);
    wmat_model_free(mg);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quants_match_ggml_reference),
        cmocka_unit_test(test_load_stories260k_gguf),
        cmocka_unit_test(test_roundtrip_synthetic),
        cmocka_unit_test(test_roundtrip_stories260k),
        cmocka_unit_test(test_resave_stories260k_gguf),
        cmocka_unit_test(test_save_errors),
        cmocka_unit_test(test_nonfinite_stored),
        cmocka_unit_test(test_tiny_valid),
        cmocka_unit_test(test_hostile_cases),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_llamacpp_peer),
    };
    return tu_run_tests("gguf", tests, NULL, NULL);
}
