/* HF directories and safetensors: mix4m-hf equals mix4m.bin tensor for
 * tensor (which proves the rotary un-permutation), save/load round trips in
 * f32/f16/bf16, sharded checkpoints, and hostile files (truncations, lying
 * headers, path traversal in the index, bad configs): each must fail with a
 * message that names the file, never crash (run under ASan/UBSan too). */
#include "support/test_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/model_internal.h"
#include "io/safetensors.h"

/* ---------------------------------------------------------------- helpers */

static wmat_config small_config(int tied)
{
    wmat_config c = tu_config(64, 96, 2, 4, 2, 40, 32);
    c.tied_embeddings = tied;
    return c;
}

/* A model with random weights (every row different, so that a wrong row
 * permutation cannot go unnoticed). */
static wmat_model *random_model(int tied, uint64_t seed)
{
    wmat_config c = small_config(tied);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_rng rng;
    wmat_rng_seed(&rng, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *x = t->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) x[j] = wmat_rng_normal(&rng);
    }
    return m;
}

/* Every tensor of a is in b with the same shape and the same bits, and the
 * configs agree. */
static void assert_models_equal(wmat_model *a, wmat_model *b)
{
    const wmat_config *ca = wmat_model_config(a), *cb = wmat_model_config(b);
    assert_int_equal(ca->dim, cb->dim);
    assert_int_equal(ca->hidden_dim, cb->hidden_dim);
    assert_int_equal(ca->n_layers, cb->n_layers);
    assert_int_equal(ca->n_heads, cb->n_heads);
    assert_int_equal(ca->n_kv_heads, cb->n_kv_heads);
    assert_int_equal(ca->vocab_size, cb->vocab_size);
    assert_int_equal(ca->seq_len, cb->seq_len);
    assert_int_equal(ca->head_dim, cb->head_dim);
    assert_int_equal(ca->tied_embeddings, cb->tied_embeddings);
    assert_true(ca->rope_theta == cb->rope_theta);
    assert_true(ca->norm_eps == cb->norm_eps);
    assert_int_equal(wmat_model_n_tensors(a), wmat_model_n_tensors(b));
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        wmat_tensor *ta = wmat_model_tensor(a, i);
        wmat_tensor *tb = wmat_model_find(b, ta->name);
        if (!tb) fail_msg("tensor %s missing", ta->name);
        assert_int_equal(ta->dtype, WMAT_F32);
        assert_int_equal(tb->dtype, WMAT_F32);
        assert_int_equal(ta->ndim, tb->ndim);
        for (int d = 0; d < ta->ndim; d++) assert_int_equal(ta->shape[d], tb->shape[d]);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(ta->data, tb->data, ta->nbytes)) fail_msg("tensor %s differs", ta->name);
    }
}

/* The last error names `what` (a file or directory). */
static void assert_fails_naming(int rc, const char *what)
{
    if (rc == WMAT_OK) fail_msg("expected an error naming %s", what);
    if (!strstr(wmat_last_error(), what)) fail_msg("error \"%s\" does not name %s", wmat_last_error(), what);
}

/* Save m as an HF directory tu_tmp(name) in dtype and read back its
 * model.safetensors whole; *hlen is the JSON header's length. */
static unsigned char *saved_safetensors(wmat_model *m, const char *name, wmat_dtype dtype, size_t *len, uint64_t *hlen)
{
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    sp.dtype = dtype;
    const char *dir = tu_tmp(name);
    TU_OK(wmat_model_save(m, dir, &sp));
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unsigned char *b = tu_slurp(p, len);
    *hlen = 0;
    for (int i = 7; i >= 0; i--) *hlen = *hlen << 8 | b[i];
    return b;
}

static void copy_file(const char *from, const char *to)
{
    size_t n;
    unsigned char *b = tu_slurp(from, &n);
    assert_int_equal(tu_write_file(to, b, n), 0);
    free(b);
}

/* A safetensors image: u64 header length, header, data_len bytes of data. */
static unsigned char *st_image(const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *b = calloc(1, *len);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (unsigned char)(i * 7);
    return b;
}

static const char *mkdir_tmp(const char *name)
{
    const char *d = tu_tmp(name);
    mkdir(d, 0777);
    return d;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
}

static int no_load(wmat_model **m, const char *dir)
{
    wmat_load_params lp = wmat_load_default_params();
    int rc = wmat_model_load(m, dir, &lp);
    if (rc == WMAT_OK) {
        wmat_model_free(*m);
        *m = NULL;
    }
    return rc;
}

static const char *g_config_ok =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
    " \"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"vocab_size\": 40, \"max_position_embeddings\": 32,"
    " \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": false}";

/* ---------------------------------------------------------------- real data */

static void test_mix4m_hf_equals_llama2c(void **state)
{
    (void)state;
    TU_NEED_DATA(hf, "models/mix4m-hf");
    TU_NEED_DATA(bin, "models/mix4m.bin");
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 0;
    wmat_model *h, *l;
    TU_OK(wmat_model_load(&h, hf, &lp));
    assert_int_equal(wmat_model_format(h), WMAT_FMT_HF);
    /* Before materialize, q/k are borrowed from the mapping and flagged. */
    wmat_tensor *q = wmat_model_linear(h, 0, WMAT_LIN_Q);
    assert_true(q->flags & WMAT_TF_HF_ROPE);
    assert_false(q->flags & WMAT_TF_OWNED);
    assert_false(wmat_model_linear(h, 0, WMAT_LIN_V)->flags & WMAT_TF_HF_ROPE);
    TU_OK(wmat_model_materialize(h));
    TU_OK(wmat_model_load(&l, bin, NULL));
    assert_int_equal(wmat_model_n_tensors(h), 3 + 6 * WMAT_W_LAYER_COUNT - 1); /* tied: no lm_head */
    assert_models_equal(h, l);
    const wmat_config *c = wmat_model_config(h);
    assert_int_equal(c->dim, 256);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->bos_id, 1);
    assert_int_equal(c->eos_id, 2);
    assert_true(wmat_model_classifier(h) == wmat_model_tok_embeddings(h));
    wmat_model_free(h);
    wmat_model_free(l);
}

/* mix4m through HF and back, with a tokenizer: the tokenizer survives too. */
static void test_mix4m_roundtrip_with_tokenizer(void **state)
{
    (void)state;
    TU_NEED_DATA(hf, "models/mix4m-hf");
    TU_NEED_DATA(tok, "models/tok512.bin");
    wmat_load_params lp = wmat_load_default_params();
    lp.tokenizer_path = tok;
    wmat_model *a, *b;
    TU_OK(wmat_model_load(&a, hf, &lp));
    assert_non_null(wmat_model_tokenizer(a));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *out = tu_tmp("mix4m-rt");
    TU_OK(wmat_model_save(a, out, &sp));
    TU_OK(wmat_model_load(&b, out, NULL));
    assert_models_equal(a, b);
    wmat_tokenizer *ta = wmat_model_tokenizer(a), *tb = wmat_model_tokenizer(b);
    assert_non_null(tb);
    assert_int_equal(wmat_tokenizer_vocab_size(ta), wmat_tokenizer_vocab_size(tb));
    for (int i = 0; i < wmat_tokenizer_vocab_size(ta); i++) {
        size_t la, lb;
        const char *pa = wmat_tokenizer_piece(ta, i, &la), *pb = wmat_tokenizer_piece(tb, i, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(pa, pb, la);
        assert_true(wmat_tokenizer_score(ta, i) == wmat_tokenizer_score(tb, i));
    }
    /* The q/k rows written are HF's again: the file matches the original. */
    char p1[1024], p2[1024];
    snprintf(p1, sizeof p1, "%s/model.safetensors", hf);
    snprintf(p2, sizeof p2, "%s/model.safetensors", out);
    wmat_st_file *f1, *f2;
    TU_OK(wmat__st_open(&f1, p1));
    TU_OK(wmat__st_open(&f2, p2));
    assert_int_equal(f1->n_tensors, f2->n_tensors);
    for (int i = 0; i < f1->n_tensors; i++) {
        const wmat_st_tensor *x = &f1->tensors[i], *y = wmat__st_find(f2, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes)) fail_msg("%s differs from the original file", x->name);
    }
    wmat__st_close(f1);
    wmat__st_close(f2);
    wmat_model_free(a);
    wmat_model_free(b);
}

/* ---------------------------------------------------------------- round trips */

static void test_roundtrip_f32(void **state)
{
    (void)state;
    for (int tied = 0; tied < 2; tied++) {
        wmat_model *m = random_model(tied, 42 + (uint64_t)tied), *r;
        wmat_save_params sp = wmat_save_default_params();
        sp.format = WMAT_FMT_HF;
        const char *dir = tu_tmp(tied ? "rt32-tied/sub/dir" : "rt32"); /* creates parents */
        TU_OK(wmat_model_save(m, dir, &sp));
        TU_OK(wmat_model_load(&r, dir, NULL));
        assert_models_equal(m, r);
        assert_null(wmat_model_tokenizer(r));
        /* No temporaries left behind. */
        DIR *d = opendir(dir);
        assert_non_null(d);
        struct dirent *de;
        int files = 0;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.') continue;
            assert_null(strstr(de->d_name, ".tmp."));
            files++;
        }
        closedir(d);
        assert_int_equal(files, 2);
        wmat_model_free(m);
        wmat_model_free(r);
    }
}

static void test_roundtrip_f16_bf16(void **state)
{
    (void)state;
    const wmat_dtype dts[2] = {WMAT_F16, WMAT_BF16};
    const char *st_names[2] = {"F16", "BF16"};
    for (int k = 0; k < 2; k++) {
        wmat_model *m = random_model(0, 7), *r;
        wmat_save_params sp = wmat_save_default_params();
        sp.format = WMAT_FMT_HF;
        sp.dtype = dts[k];
        const char *dir = tu_tmp(k ? "rtbf16" : "rtf16");
        TU_OK(wmat_model_save(m, dir, &sp));

        wmat_load_params lp = wmat_load_default_params();
        lp.materialize_f32 = 0;
        TU_OK(wmat_model_load(&r, dir, &lp));
        assert_int_equal(wmat_model_linear(r, 1, WMAT_LIN_DOWN)->dtype, dts[k]);
        assert_int_equal(wmat_model_final_norm(r)->dtype, WMAT_F32); /* norms stay f32 */
        TU_OK(wmat_model_materialize(r));
        for (int i = 0; i < wmat_model_n_tensors(m); i++) {
            wmat_tensor *a = wmat_model_tensor(m, i), *b = wmat_model_find(r, a->name);
            assert_non_null(b);
            int64_t n = wmat_tensor_nelem(a);
            float *want = malloc((size_t)n * sizeof(float));
            uint16_t *half = malloc((size_t)n * sizeof(uint16_t));
            if (a->ndim == 2) {
                TU_OK(wmat_from_f32(half, dts[k], a->data, (uint64_t)n));
                TU_OK(wmat_to_f32(want, half, dts[k], (uint64_t)n));
            } else {
                memcpy(want, a->data, (size_t)n * sizeof(float));
            }
            if (memcmp(want, b->data, (size_t)n * sizeof(float))) fail_msg("%s differs", a->name);
            free(want);
            free(half);
        }
        char p[1024], cfgp[1024];
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        wmat_st_file *f;
        TU_OK(wmat__st_open(&f, p));
        assert_string_equal(wmat__st_dtype_name(wmat__st_find(f, "lm_head.weight")->dtype), st_names[k]);
        wmat__st_close(f);
        snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
        size_t len;
        char *cfg = (char *)tu_slurp(cfgp, &len);
        assert_non_null(strstr(cfg, k ? "\"torch_dtype\": \"bfloat16\"" : "\"torch_dtype\": \"float16\""));
        assert_non_null(strstr(cfg, "\"rms_norm_eps\": 1e-05"));
        assert_non_null(strstr(cfg, "\"rope_theta\": 10000.0"));
        assert_non_null(strstr(cfg, "\"tie_word_embeddings\": false"));
        free(cfg);
        wmat_model_free(m);
        wmat_model_free(r);
    }
}

/* The file looks like the reference writer's: padded header, metadata,
 * F32 data before F16, names sorted within a dtype, HF rotary rows. */
static void test_saved_layout(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 99);
    size_t len;
    uint64_t hlen;
    unsigned char *b = saved_safetensors(m, "layout", WMAT_F16, &len, &hlen);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(b[8], '{');
    assert_memory_equal(b + 8, "{\"__metadata__\":{\"format\":\"pt\"},", 32);
    free(b);

    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", tu_tmp("layout"));
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, p));
    assert_string_equal(wmat__st_meta_get(f, "format"), "pt");
    assert_int_equal(f->n_tensors, 3 + 2 * WMAT_W_LAYER_COUNT);
    for (int i = 1; i < f->n_tensors; i++) {
        const wmat_st_tensor *x = &f->tensors[i - 1], *y = &f->tensors[i];
        assert_int_equal(x->end, y->begin); /* contiguous, in header order */
        int bx = wmat__st_dtype_bits(x->dtype), by = wmat__st_dtype_bits(y->dtype);
        assert_true(bx > by || (bx == by && strcmp(x->name, y->name) < 0));
    }
    assert_int_equal(f->tensors[f->n_tensors - 1].end, len - f->data_start);
    /* q_proj of layer 1 stored in HF order: row j*hd/2+i of head h is
     * wmat's row 2i+j. */
    const wmat_config *c = wmat_model_config(m);
    const wmat_st_tensor *q = wmat__st_find(f, "model.layers.1.self_attn.q_proj.weight");
    assert_non_null(q);
    const float *w = wmat_model_linear(m, 1, WMAT_LIN_Q)->data;
    int hd = c->head_dim, half = hd / 2;
    for (int h = 0; h < c->n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                int hf_row = h * hd + j * half + i, w_row = h * hd + 2 * i + j;
                uint16_t v;
                memcpy(&v, (const unsigned char *)q->data + ((size_t)hf_row * (size_t)c->dim + 3) * 2, 2);
                assert_int_equal(v, wmat_f32_to_f16(w[(size_t)w_row * (size_t)c->dim + 3]));
            }
    wmat__st_close(f);
    wmat_model_free(m);
}

/* Saving over the directory a model was loaded from: the renames replace
 * the files while the old ones stay mapped, so the save reads intact data. */
static void test_save_over_source(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 77), *a, *b;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *dir = tu_tmp("inplace");
    TU_OK(wmat_model_save(m, dir, &sp));
    TU_OK(wmat_model_load(&a, dir, NULL)); /* f32: v, o, mlp, norms stay mapped */
    assert_false(wmat_model_linear(a, 0, WMAT_LIN_V)->flags & WMAT_TF_OWNED);
    sp.dtype = WMAT_BF16;
    TU_OK(wmat_model_save(a, dir, &sp));
    assert_models_equal(m, a);
    TU_OK(wmat_model_load(&b, dir, NULL));
    assert_int_equal(wmat_model_n_tensors(a), wmat_model_n_tensors(b));
    wmat_model_free(a);
    wmat_model_free(b);
    wmat_model_free(m);
}

static void test_save_rejects_quantized(void **state)
{
    (void)state;
    wmat_model *m = random_model(1, 3);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    sp.dtype = WMAT_Q8_0;
    const char *dir = tu_tmp("q8");
    int rc = wmat_model_save(m, dir, &sp);
    assert_int_equal(rc, WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "q8_0"));
    struct stat st;
    assert_int_not_equal(stat(dir, &st), 0); /* nothing written */
    /* A plain file where the directory should be. */
    const char *file = tu_tmp("notadir");
    assert_int_equal(tu_write_file(file, "x", 1), 0);
    sp.dtype = WMAT_F32;
    assert_fails_naming(wmat_model_save(m, file, &sp), file);
    wmat_model_free(m);
}

/* ---------------------------------------------------------------- the st API */

static void test_st_writer_mixed(void **state)
{
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[3] = {0x3c00, 0x4000, 0x4200};
    uint8_t u[5] = {9, 8, 7, 6, 5};
    int32_t i32[2] = {-1, 7};
    wmat_st_entry e[5] = {
        {.name = "z.f16", .dtype = WMAT_ST_F16, .ndim = 1, .shape = {3}, .data = h},
        {.name = "a.u8", .dtype = WMAT_ST_U8, .ndim = 1, .shape = {5}, .data = u},
        {.name = "m.f32", .dtype = WMAT_ST_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b.i32", .dtype = WMAT_ST_I32, .ndim = 1, .shape = {2}, .data = i32},
        {.name = "q\"uote\\\n", .dtype = WMAT_ST_U8, .ndim = 0, .data = u},
    };
    wmat_st_meta meta[2] = {{"format", "pt"}, {"wmat.method", "gptq \"4bit\""}};
    const char *p = tu_tmp("mixed.safetensors");
    TU_OK(wmat__st_write(p, e, 5, meta, 2));
    wmat_st_file *f;
    TU_OK(wmat__st_open(&f, p));
    assert_int_equal(f->n_tensors, 5);
    assert_int_equal(f->n_meta, 2);
    assert_string_equal(wmat__st_meta_get(f, "wmat.method"), "gptq \"4bit\"");
    const char *order[5] = {"b.i32", "m.f32", "z.f16", "a.u8", "q\"uote\\\n"};
    for (int i = 0; i < 5; i++) assert_string_equal(f->tensors[i].name, order[i]);
    for (int i = 0; i < 5; i++) {
        const wmat_st_tensor *t = wmat__st_find(f, e[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, e[i].dtype);
        assert_int_equal(t->ndim, e[i].ndim);
        /* every tensor aligned to its element size */
        assert_int_equal(((uintptr_t)t->data) % (uintptr_t)(wmat__st_dtype_bits(t->dtype) / 8), 0);
        assert_memory_equal(t->data, e[i].data, t->nbytes);
    }
    assert_int_equal(wmat__st_find(f, "q\"uote\\\n")->nelem, 1);
    assert_null(wmat__st_find(f, "nope"));
    wmat__st_close(f);

    /* Duplicates and reserved names are the caller's mistake. */
    e[1].name = "z.f16";
    assert_int_equal(wmat__st_write(tu_tmp("dup.safetensors"), e, 5, NULL, 0), WMAT_ERR_INVALID);
    e[1].name = "__metadata__";
    assert_int_equal(wmat__st_write(tu_tmp("dup.safetensors"), e, 5, NULL, 0), WMAT_ERR_INVALID);
    struct stat st;
    assert_int_not_equal(stat(tu_tmp("dup.safetensors"), &st), 0);
    /* No metadata, no tensors: "{}" padded. */
    TU_OK(wmat__st_write(tu_tmp("empty.safetensors"), NULL, 0, NULL, 0));
    TU_OK(wmat__st_open(&f, tu_tmp("empty.safetensors")));
    assert_int_equal(f->n_tensors, 0);
    wmat__st_close(f);
    /* Packed 4-bit values must fill whole bytes. */
    wmat_st_entry f4 = {.name = "p", .dtype = WMAT_ST_F4, .ndim = 1, .shape = {3}, .data = u};
    assert_int_equal(wmat__st_write(tu_tmp("f4.safetensors"), &f4, 1, NULL, 0), WMAT_ERR_INVALID);
    f4.shape[0] = 4;
    TU_OK(wmat__st_write(tu_tmp("f4.safetensors"), &f4, 1, NULL, 0));
    TU_OK(wmat__st_open(&f, tu_tmp("f4.safetensors")));
    assert_int_equal(f->tensors[0].nbytes, 2);
    wmat__st_close(f);
}

/* Every cut of a valid file fails cleanly (the buffer is exactly the cut
 * size, so ASan sees any over-read). */
static void test_st_truncations(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 5);
    size_t len;
    uint64_t hlen;
    unsigned char *full = saved_safetensors(m, "trunc-src", WMAT_BF16, &len, &hlen);
    for (size_t cut = 0; cut < len; cut += (cut < 8 + hlen + 64 ? 1 : 97)) {
        unsigned char *b = malloc(cut ? cut : 1);
        memcpy(b, full, cut);
        wmat_st_file *f = NULL;
        int rc = wmat__st_parse(&f, b, cut, "cut.safetensors");
        if (rc == WMAT_OK) fail_msg("cut at %zu of %zu parsed", cut, len);
        assert_int_equal(rc, WMAT_ERR_FORMAT);
        assert_non_null(strstr(wmat_last_error(), "cut.safetensors"));
        free(b);
    }
    wmat_st_file *f;
    TU_OK(wmat__st_parse(&f, full, len, "full"));
    wmat__st_close(f);

    /* Through the HF loader, as files. */
    const char *dir = tu_tmp("trunc-src");
    const char *cdir = mkdir_tmp("trunc-dir");
    char cfg_from[1024], cfg_to[1024], st_to[1024];
    snprintf(cfg_from, sizeof cfg_from, "%s/config.json", dir);
    snprintf(cfg_to, sizeof cfg_to, "%s/config.json", cdir);
    snprintf(st_to, sizeof st_to, "%s/model.safetensors", cdir);
    copy_file(cfg_from, cfg_to);
    const size_t cuts[] = {0, 3, 8, 9, 8 + (size_t)hlen / 2, 8 + (size_t)hlen, 8 + (size_t)hlen + 1, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        assert_int_equal(tu_write_file(st_to, full, cuts[i]), 0);
        wmat_model *r;
        assert_fails_naming(no_load(&r, cdir), st_to);
    }
    free(full);
    wmat_model_free(m);
}

static void test_st_hostile_headers(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        size_t data;
        const char *expect; /* a phrase of the message */
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, "JSON"},
        {"[1,2]", 0, "object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "after"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "need 12"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "need 4"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflow"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8, "non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,512],\"data_offsets\":[0,8]}}", 8, "overflow"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "rank"},
        {"{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", 8, "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "two"},
        {"{\"a\":[]}", 8, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "duplicate"},
        {"{\"__metadata__\":{\"x\":1}}", 0, "__metadata__"},
        {"{\"__metadata__\":[]}", 0, "__metadata__"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "twice"},
        {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 8, "whole number"},
        {"", 0, "empty"},
        {"{", 0, "empty"},
        {"{\"a\":\"\0\"}", 0, "JSON"}, /* the NUL ends the C literal: a short header */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        unsigned char *b = st_image(cases[i].header, cases[i].data, &len);
        wmat_st_file *f = NULL;
        int rc = wmat__st_parse(&f, b, len, "hostile.safetensors");
        if (rc == WMAT_OK) fail_msg("case %zu parsed: %s", i, cases[i].header);
        assert_int_equal(rc, WMAT_ERR_FORMAT);
        if (!strstr(wmat_last_error(), "hostile.safetensors") || !strstr(wmat_last_error(), cases[i].expect))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, wmat_last_error(), cases[i].expect);
        free(b);
    }

    /* Header length beyond the file, beyond the cap, and a NUL in it. */
    size_t len;
    unsigned char *b = st_image("{}", 0, &len);
    b[0] = 3;
    assert_fails_naming(wmat__st_parse(&(wmat_st_file *){NULL}, b, len, "long.safetensors"), "long.safetensors");
    assert_non_null(strstr(wmat_last_error(), "exceeds the file size"));
    memset(b, 0xff, 8);
    assert_fails_naming(wmat__st_parse(&(wmat_st_file *){NULL}, b, len, "huge.safetensors"), "huge.safetensors");
    assert_non_null(strstr(wmat_last_error(), "limit"));
    free(b);
    b = st_image("{\"a\":1}  ", 0, &len);
    b[8 + 7] = 0;
    assert_fails_naming(wmat__st_parse(&(wmat_st_file *){NULL}, b, len, "nul.safetensors"), "nul.safetensors");
    free(b);

    /* Valid corner cases: zero-size tensors, scalars, overlapping ranges,
     * trailing unreferenced bytes. */
    b = st_image("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
                 "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                 "\"o\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}    ",
                 12, &len);
    wmat_st_file *f;
    TU_OK(wmat__st_parse(&f, b, len, "ok.safetensors"));
    assert_int_equal(f->n_tensors, 3);
    assert_int_equal(wmat__st_find(f, "e")->nelem, 0);
    assert_int_equal(wmat__st_find(f, "s")->ndim, 0);
    assert_ptr_equal(wmat__st_find(f, "o")->data, b + len - 12 + 4);
    wmat__st_close(f);
    free(b);
}

/* Random byte damage to a real header: parse or fail, never crash. */
static void test_st_fuzz(void **state)
{
    (void)state;
    wmat_model *m = random_model(1, 11);
    size_t len;
    uint64_t hlen;
    unsigned char *full = saved_safetensors(m, "fuzz-src", wmat_save_default_params().dtype, &len, &hlen);
    size_t span = 8 + (size_t)hlen;
    wmat_rng rng;
    wmat_rng_seed(&rng, 1234);
    const char *alphabet = "{}[]\":,0123456789-.eE \\";
    int ok = 0;
    for (int it = 0; it < 3000; it++) {
        unsigned char *b = malloc(len);
        memcpy(b, full, len);
        int edits = 1 + (int)(wmat_rng_u64(&rng) % 4);
        for (int k = 0; k < edits; k++) {
            size_t at = (size_t)(wmat_rng_u64(&rng) % span);
            b[at] = wmat_rng_u64(&rng) % 2 ? (unsigned char)alphabet[wmat_rng_u64(&rng) % strlen(alphabet)]
                                            : (unsigned char)wmat_rng_u64(&rng);
        }
        wmat_st_file *f = NULL;
        int rc = wmat__st_parse(&f, b, len, "fuzz.safetensors");
        if (rc == WMAT_OK) {
            ok++;
            /* Whatever parsed must be inside the buffer. */
            for (int i = 0; i < f->n_tensors; i++) {
                const wmat_st_tensor *t = &f->tensors[i];
                assert_true((const unsigned char *)t->data >= b &&
                            (const unsigned char *)t->data + t->nbytes <= b + len);
            }
            wmat__st_close(f);
        } else {
            assert_non_null(strstr(wmat_last_error(), "fuzz.safetensors"));
        }
        free(b);
    }
    print_message("fuzz: %d of 3000 damaged headers still parsed\n", ok);
    free(full);
    wmat_model_free(m);
}

/* ---------------------------------------------------------------- HF dirs */

/* A directory holding config text and a model.safetensors of entries. */
static const char *hf_dir(const char *name, const char *config, const wmat_st_entry *e, int n)
{
    const char *d = mkdir_tmp(name);
    write_text(d, "config.json", config);
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    TU_OK(wmat__st_write(p, e, n, NULL, 0));
    return d;
}

/* Entries of a saved random model's file, to edit for hostile variants. */
typedef struct {
    wmat_st_file *f;
    wmat_st_entry e[64];
    int n;
} entry_set;

static void entries_of(entry_set *s, const char *path)
{
    TU_OK(wmat__st_open(&s->f, path));
    assert_true(s->f->n_tensors <= 64);
    s->n = s->f->n_tensors;
    for (int i = 0; i < s->n; i++) {
        const wmat_st_tensor *t = &s->f->tensors[i];
        memset(&s->e[i], 0, sizeof s->e[i]);
        s->e[i].name = t->name;
        s->e[i].dtype = t->dtype;
        s->e[i].ndim = t->ndim;
        memcpy(s->e[i].shape, t->shape, sizeof t->shape);
        s->e[i].data = t->data;
    }
}

static int find_entry(const entry_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].name, name)) return i;
    fail_msg("no entry %s", name);
    return -1;
}

static void test_hf_hostile_tensors(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 21), *r;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *src = tu_tmp("hostile-src");
    TU_OK(wmat_model_save(m, src, &sp));
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    entry_set s;
    entries_of(&s, p);

    /* Sanity: the unedited entries with the hand-written config load. */
    const char *d = hf_dir("hz-ok", g_config_ok, s.e, s.n);
    TU_OK(wmat_model_load(&r, d, NULL));
    assert_models_equal(m, r);
    wmat_model_free(r);

    /* A missing layer tensor. */
    entry_set t = s;
    int k = find_entry(&t, "model.layers.1.mlp.up_proj.weight");
    t.e[k] = t.e[--t.n];
    d = hf_dir("hz-missing", g_config_ok, t.e, t.n);
    assert_fails_naming(no_load(&r, d), d);
    assert_non_null(strstr(wmat_last_error(), "model.layers.1.mlp.up_proj.weight"));

    /* lm_head missing while not tied. */
    t = s;
    k = find_entry(&t, "lm_head.weight");
    t.e[k] = t.e[--t.n];
    d = hf_dir("hz-nohead", g_config_ok, t.e, t.n);
    assert_fails_naming(no_load(&r, d), "lm_head.weight");
    /* ...which is fine when tied; a stored lm_head is ignored when tied. */
    char tied_cfg[1024];
    snprintf(tied_cfg, sizeof tied_cfg, "%s", g_config_ok);
    char *f = strstr(tied_cfg, "false");
    memcpy(f, "true ", 5);
    d = hf_dir("hz-tied", tied_cfg, t.e, t.n);
    TU_OK(wmat_model_load(&r, d, NULL));
    assert_null(wmat_model_find(r, "lm_head.weight"));
    wmat_model_free(r);
    d = hf_dir("hz-tied-head", tied_cfg, s.e, s.n);
    TU_OK(wmat_model_load(&r, d, NULL));
    assert_null(wmat_model_find(r, "lm_head.weight"));
    assert_true(wmat_model_classifier(r) == wmat_model_tok_embeddings(r));
    wmat_model_free(r);

    /* A wrong shape, a wrong dtype, an unknown tensor, a layer too many. */
    t = s;
    k = find_entry(&t, "model.layers.0.self_attn.k_proj.weight");
    t.e[k].shape[0] = 64; /* q's shape: data is short, so give it q's data */
    t.e[k].data = t.e[find_entry(&t, "model.layers.0.self_attn.q_proj.weight")].data;
    d = hf_dir("hz-shape", g_config_ok, t.e, t.n);
    assert_fails_naming(no_load(&r, d), "model.layers.0.self_attn.k_proj.weight");
    t = s;
    k = find_entry(&t, "model.norm.weight");
    t.e[k].dtype = WMAT_ST_I32;
    d = hf_dir("hz-dtype", g_config_ok, t.e, t.n);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    assert_int_equal(no_load(&r, d), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), p));
    assert_non_null(strstr(wmat_last_error(), "I32"));
    const char *bad_names[] = {"model.layers.2.mlp.up_proj.weight", "model.layers.01.mlp.up_proj.weight",
                               "model.layers.0.mlp.up_proj.bias", "model.extra", "model.layers.-1.mlp.up_proj.weight"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        t = s;
        t.e[t.n] = t.e[find_entry(&t, "model.layers.0.mlp.up_proj.weight")];
        t.e[t.n++].name = bad_names[i];
        d = hf_dir("hz-extra", g_config_ok, t.e, t.n);
        assert_fails_naming(no_load(&r, d), bad_names[i]);
    }
    /* Old checkpoints carry rotary buffers: ignored. */
    t = s;
    float inv[8] = {0};
    t.e[t.n++] = (wmat_st_entry){.name = "model.layers.1.self_attn.rotary_emb.inv_freq", .dtype = WMAT_ST_F32,
                                 .ndim = 1, .shape = {8}, .data = inv};
    d = hf_dir("hz-invfreq", g_config_ok, t.e, t.n);
    TU_OK(wmat_model_load(&r, d, NULL));
    wmat_model_free(r);

    /* No weights at all. */
    d = mkdir_tmp("hz-noweights");
    write_text(d, "config.json", g_config_ok);
    assert_fails_naming(no_load(&r, d), d);
    assert_int_equal(no_load(&r, tu_tmp("does-not-exist")), WMAT_ERR_IO);

    wmat__st_close(s.f);
    wmat_model_free(m);
}

static void test_hf_hostile_configs(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 23), *r;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *src = tu_tmp("cfg-src");
    TU_OK(wmat_model_save(m, src, &sp));
    char st_from[1024];
    snprintf(st_from, sizeof st_from, "%s/model.safetensors", src);
    static const struct {
        const char *replace, *with; /* edit of g_config_ok ("" with: append) */
        int status;
    } cases[] = {
        {"\"hidden_size\": 64,", "", WMAT_ERR_FORMAT},
        {"\"vocab_size\": 40,", "", WMAT_ERR_FORMAT},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": -2", WMAT_ERR_FORMAT},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 0", WMAT_ERR_FORMAT},
        {"\"vocab_size\": 40", "\"vocab_size\": 1e12", WMAT_ERR_FORMAT},
        {"\"vocab_size\": 40", "\"vocab_size\": 100000000", WMAT_ERR_FORMAT},
        {"\"hidden_size\": 64", "\"hidden_size\": 64.5", WMAT_ERR_FORMAT},
        {"\"hidden_size\": 64", "\"hidden_size\": \"64\"", WMAT_ERR_FORMAT},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 3", WMAT_ERR_FORMAT},
        {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", WMAT_ERR_FORMAT},
        {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": -1", WMAT_ERR_FORMAT},
        {"\"tie_word_embeddings\": false", "\"tie_word_embeddings\": \"no\"", WMAT_ERR_FORMAT},
        {"\"model_type\": \"llama\"", "\"model_type\": \"mistral\"", WMAT_ERR_UNSUPPORTED},
        {"\"LlamaForCausalLM\"", "\"GPT2LMHeadModel\"", WMAT_ERR_UNSUPPORTED},
        {"}", ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}", WMAT_ERR_UNSUPPORTED},
        {"}", ", \"hidden_act\": \"gelu\"}", WMAT_ERR_UNSUPPORTED},
        {"}", ", \"attention_bias\": true}", WMAT_ERR_UNSUPPORTED},
        {"}", ", \"bos_token_id\": -1}", WMAT_ERR_FORMAT},
        {"}", ", \"eos_token_id\": [\"x\"]}", WMAT_ERR_FORMAT},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\",", "{", WMAT_ERR_FORMAT},
        {"}", "", WMAT_ERR_FORMAT},   /* truncated JSON */
        {"{", "[{", WMAT_ERR_FORMAT}, /* not an object */
    };
    const char *d = mkdir_tmp("cfg-hostile");
    char st_to[1024], cfg_path[1024];
    snprintf(st_to, sizeof st_to, "%s/model.safetensors", d);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", d);
    copy_file(st_from, st_to);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cfg[2048];
        const char *at = strstr(g_config_ok, cases[i].replace);
        assert_non_null(at);
        /* the last "}" for appends */
        if (!strcmp(cases[i].replace, "}")) at = strrchr(g_config_ok, '}');
        snprintf(cfg, sizeof cfg, "%.*s%s%s", (int)(at - g_config_ok), g_config_ok, cases[i].with,
                 at + strlen(cases[i].replace));
        write_text(d, "config.json", cfg);
        int rc = no_load(&r, d);
        if (rc != cases[i].status || !strstr(wmat_last_error(), cfg_path))
            fail_msg("case %zu (%s): got %d \"%s\"", i, cfg, rc, wmat_last_error());
    }
    /* head_dim 32 x 4 heads: attention 128 wide (a sliced model's shape),
     * which the stored q_proj (64 x 64) contradicts */
    {
        char cfg[2048];
        const char *at = strrchr(g_config_ok, '}');
        snprintf(cfg, sizeof cfg, "%.*s, \"head_dim\": 32}%s", (int)(at - g_config_ok), g_config_ok, at + 1);
        write_text(d, "config.json", cfg);
        int rc = no_load(&r, d);
        if (rc != WMAT_ERR_FORMAT || !strstr(wmat_last_error(), "q_proj"))
            fail_msg("head_dim 32: got %d \"%s\"", rc, wmat_last_error());
    }
    /* Accepted variants: eos list, null bos, defaults, "default" rope_scaling. */
    const char *fine[] = {", \"eos_token_id\": [2, 5], \"bos_token_id\": null}",
                          ", \"rope_scaling\": {\"type\": \"default\"}, \"hidden_act\": \"silu\"}",
                          ", \"num_key_value_heads\": null, \"rope_theta\": 500000.0}"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        char cfg[2048];
        const char *at = strrchr(g_config_ok, '}');
        snprintf(cfg, sizeof cfg, "%.*s%s", (int)(at - g_config_ok), g_config_ok, fine[i]);
        if (i == 2) { /* kv heads null -> heads: k/v shapes no longer match */
            write_text(d, "config.json", cfg);
            assert_fails_naming(no_load(&r, d), "k_proj");
            continue;
        }
        write_text(d, "config.json", cfg);
        TU_OK(wmat_model_load(&r, d, NULL));
        assert_int_equal(wmat_model_config(r)->eos_id, 2);
        assert_int_equal(wmat_model_config(r)->bos_id, 1);
        wmat_model_free(r);
    }
    /* No config at all. */
    remove(cfg_path);
    assert_fails_naming(no_load(&r, d), cfg_path);
    wmat_model_free(m);
}

/* ---------------------------------------------------------------- shards */

static void test_sharded(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 31), *r;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *src = tu_tmp("shard-src");
    TU_OK(wmat_model_save(m, src, &sp));
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    entry_set s;
    entries_of(&s, p);

    /* Split: layer 0, embeddings and norm in shard 1; the rest in shard 2. */
    wmat_st_entry a[64], b[64];
    int na = 0, nb = 0;
    char index[16384];
    size_t k = (size_t)snprintf(index, sizeof index, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (int i = 0; i < s.n; i++) {
        int first = strstr(s.e[i].name, "layers.0.") || !strstr(s.e[i].name, "layers.");
        if (first) a[na++] = s.e[i];
        else b[nb++] = s.e[i];
        k += (size_t)snprintf(index + k, sizeof index - k, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                              i ? ", " : "", s.e[i].name, first ? 1 : 2);
    }
    snprintf(index + k, sizeof index - k, "}}");
    const char *d = mkdir_tmp("sharded");
    char cfg_from[1024], cfg_to[1024], s1[1024], s2[1024];
    snprintf(cfg_from, sizeof cfg_from, "%s/config.json", src);
    snprintf(cfg_to, sizeof cfg_to, "%s/config.json", d);
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", d);
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", d);
    copy_file(cfg_from, cfg_to);
    TU_OK(wmat__st_write(s1, a, na, (wmat_st_meta[]){{"format", "pt"}}, 1));
    TU_OK(wmat__st_write(s2, b, nb, (wmat_st_meta[]){{"format", "pt"}}, 1));
    write_text(d, "model.safetensors.index.json", index);
    TU_OK(wmat_model_load(&r, d, NULL));
    assert_models_equal(m, r);
    wmat_model_free(r);

    /* Hostile indexes. */
    char idx_path[1024];
    snprintf(idx_path, sizeof idx_path, "%s/model.safetensors.index.json", d);
    const char *bad[] = {
        "{\"weight_map\": {\"model.norm.weight\": \"../shard-src/model.safetensors\"}}",
        "{\"weight_map\": {\"model.norm.weight\": \"/etc/passwd\"}}",
        "{\"weight_map\": {\"model.norm.weight\": \"..\"}}",
        "{\"weight_map\": {\"model.norm.weight\": \"sub\\\\..\\\\x\"}}",
        "{\"weight_map\": {\"model.norm.weight\": \"\"}}",
        "{\"weight_map\": {\"model.norm.weight\": 3}}",
        "{\"weight_map\": []}",
        "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"",
        "{\"weight_map\": {\"model.norm.weight\": \"missing.safetensors\"}}",
        "{\"weight_map\": {\"model.layers.1.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\"}}",
        "{\"weight_map\": {}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(d, "model.safetensors.index.json", bad[i]);
        int rc = no_load(&r, d);
        if (rc == WMAT_OK) fail_msg("index %zu loaded", i);
        /* the index or the shard it names; the last: the model directory */
        if (!strstr(wmat_last_error(), d)) fail_msg("index %zu: \"%s\"", i, wmat_last_error());
        if (i < 10 && !strstr(wmat_last_error(), idx_path)) fail_msg("index %zu: \"%s\"", i, wmat_last_error());
    }
    /* The same tensor in both shards. */
    b[nb++] = a[0];
    TU_OK(wmat__st_write(s2, b, nb, NULL, 0));
    write_text(d, "model.safetensors.index.json", index);
    assert_fails_naming(no_load(&r, d), a[0].name);
    wmat__st_close(s.f);
    wmat_model_free(m);
}

/* ---------------------------------------------------------------- tokenizer.json */

typedef struct {
    char *p;
    size_t len, cap;
} tbuf;

static void tb_put(tbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
static void tb_str(tbuf *b, const char *s) { tb_put(b, s, strlen(s)); }
/* A JSON string of a piece, its spaces written as U+2581 the way HF's
 * tokenizer.json stores SentencePiece pieces. */
static void tb_piece(tbuf *b, const char *s, size_t n)
{
    tb_str(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == ' ') tb_str(b, "\xe2\x96\x81");
        else if (c == '"' || c == '\\') tb_put(b, (char[]){'\\', (char)c}, 2);
        else if (c < 0x20) tb_put(b, e, (size_t)snprintf(e, sizeof e, "\\u%04x", c));
        else tb_put(b, (const char *)&s[i], 1);
    }
    tb_str(b, "\"");
}

typedef struct {
    const char *s;
    size_t n;
    int id;
    float score;
} tpiece;

static int tp_cmp_str(const void *a, const void *b)
{
    const tpiece *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}
static int tp_cmp_score(const void *a, const void *b)
{
    const tpiece *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return x->id - y->id;
}
static int tp_find(const tpiece *sorted, int n, const char *s, size_t len)
{
    tpiece key = {s, len, 0, 0};
    const tpiece *hit = bsearch(&key, sorted, (size_t)n, sizeof key, tp_cmp_str);
    return hit ? hit->id : -1;
}
typedef struct {
    int l, r;
} tmerge;
static int tm_cmp(const void *a, const void *b)
{
    const tmerge *x = a, *y = b;
    return x->l != y->l ? x->l - y->l : x->r - y->r;
}

/* The tokenizer.json transformers' converter makes from a SentencePiece
 * model: vocab, and merges from every split of every piece into two pieces,
 * pieces by descending score, splits by (left id, right id). */
static char *tokenizer_json_of(const wmat_tokenizer *t, int array_merges)
{
    int n = wmat_tokenizer_vocab_size(t);
    tpiece *by_str = calloc((size_t)n, sizeof *by_str), *by_score = calloc((size_t)n, sizeof *by_score);
    for (int i = 0; i < n; i++) {
        by_str[i].s = wmat_tokenizer_piece(t, i, &by_str[i].n);
        by_str[i].id = i;
        by_str[i].score = wmat_tokenizer_score(t, i);
    }
    memcpy(by_score, by_str, (size_t)n * sizeof *by_str);
    qsort(by_str, (size_t)n, sizeof *by_str, tp_cmp_str);
    qsort(by_score, (size_t)n, sizeof *by_score, tp_cmp_score);
    tbuf b = {0};
    tb_str(&b, "{\"version\": \"1.0\", \"added_tokens\": [");
    const char *special[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        char e[160];
        snprintf(e, sizeof e, "%s{\"id\": %d, \"content\": \"%s\", \"special\": true}", i ? ", " : "", i, special[i]);
        tb_str(&b, e);
    }
    tb_str(&b, "], \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": true, \"vocab\": {");
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *p = wmat_tokenizer_piece(t, i, &len);
        char e[32];
        if (i) tb_str(&b, ", ");
        if (i < 3) tb_piece(&b, special[i], strlen(special[i]));
        else tb_piece(&b, p, len);
        tb_str(&b, (snprintf(e, sizeof e, ": %d", i), e));
    }
    tb_str(&b, "}, \"merges\": [");
    tmerge *local = malloc(256 * sizeof *local);
    int first = 1;
    for (int k = 0; k < n; k++) {
        const tpiece *pc = &by_score[k];
        if (pc->id < 3) continue;
        int nl = 0;
        for (size_t cut = 1; cut < pc->n && nl < 256; cut++) {
            if (((unsigned char)pc->s[cut] & 0xC0) == 0x80) continue; /* inside a codepoint */
            int l = tp_find(by_str, n, pc->s, cut), r = tp_find(by_str, n, pc->s + cut, pc->n - cut);
            if (l >= 3 && r >= 3) local[nl++] = (tmerge){l, r};
        }
        qsort(local, (size_t)nl, sizeof *local, tm_cmp);
        for (int j = 0; j < nl; j++) {
            size_t la, lr;
            const char *a = wmat_tokenizer_piece(t, local[j].l, &la), *c = wmat_tokenizer_piece(t, local[j].r, &lr);
            if (!first) tb_str(&b, ", ");
            first = 0;
            if (array_merges) {
                tb_str(&b, "[");
                tb_piece(&b, a, la);
                tb_str(&b, ", ");
                tb_piece(&b, c, lr);
                tb_str(&b, "]");
            } else { /* one string "a b": splice the two quoted pieces */
                tbuf one = {0};
                tb_piece(&one, a, la);
                one.p[--one.len] = '\0';
                tb_str(&one, " ");
                tbuf two = {0};
                tb_piece(&two, c, lr);
                tb_str(&one, two.p + 1);
                tb_str(&b, one.p);
                free(one.p);
                free(two.p);
            }
        }
    }
    tb_str(&b, "]}}");
    free(local);
    free(by_str);
    free(by_score);
    return b.p;
}

/* A tokenizer.json beside an HF model (and no tokenizer.bin) encodes every
 * golden text exactly as the llama2.c tokenizer it was made from. */
static void check_tokenizer_json(const char *tok_rel, int vocab, int array_merges, const char *ids_suffix)
{
    TU_NEED_DATA(tok_path, tok_rel);
    wmat_tokenizer *ref;
    TU_OK(wmat_tokenizer_load_llama2c(&ref, tok_path, vocab));
    wmat_config c = small_config(1);
    c.vocab_size = vocab;
    wmat_model *m, *r;
    TU_OK(wmat_model_create(&m, &c));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    sp.dtype = WMAT_BF16;
    char name[64];
    snprintf(name, sizeof name, "tokjson-%d", vocab);
    const char *dir = tu_tmp(name);
    TU_OK(wmat_model_save(m, dir, &sp));
    wmat_model_free(m);
    char *json = tokenizer_json_of(ref, array_merges);
    write_text(dir, "tokenizer.json", json);
    free(json);
    TU_OK(wmat_model_load(&r, dir, NULL));
    wmat_tokenizer *tj = wmat_model_tokenizer(r);
    assert_non_null(tj);
    assert_int_equal(wmat_tokenizer_vocab_size(tj), vocab);
    assert_int_equal(wmat_tokenizer_type(tj, 1), 3);
    assert_int_equal(wmat_tokenizer_type(tj, 3 + 'A'), 6);
    int checked = 0;
    for (int k = 1; k <= 4; k++) {
        char rel[64];
        snprintf(rel, sizeof rel, "golden/tok_case%d.txt", k);
        const char *tp = tu_data(rel);
        if (!tp) continue;
        size_t len;
        char *text = (char *)tu_slurp(tp, &len);
        int32_t *a, *b;
        size_t na, nb;
        TU_OK(wmat_tokenizer_encode(ref, text, len, 1, 0, &a, &na));
        TU_OK(wmat_tokenizer_encode(tj, text, len, 1, 0, &b, &nb));
        assert_int_equal(na, nb);
        for (size_t i = 0; i < na; i++)
            if (a[i] != b[i]) fail_msg("%s: token %zu: %d from the .bin, %d from tokenizer.json", rel, i, a[i], b[i]);
        /* and the golden ids of run.c */
        snprintf(rel, sizeof rel, "golden/tok_case%d.%s.ids", k, ids_suffix);
        const char *ip = tu_data(rel);
        if (ip) {
            size_t il;
            char *ids = (char *)tu_slurp(ip, &il), *q = ids;
            for (size_t i = 0; i < nb; i++) assert_int_equal(strtol(q, &q, 10), b[i]);
            free(ids);
        }
        free(a);
        free(b);
        free(text);
        checked++;
    }
    print_message("tokenizer.json (vocab %d): %d golden texts\n", vocab, checked);
    wmat_model_free(r);
    wmat_tokenizer_free(ref);
}

static void test_tokenizer_json_tok512(void **state)
{
    (void)state;
    check_tokenizer_json("models/tok512.bin", 512, 0, "tok512");
}

static void test_tokenizer_json_llama32000(void **state)
{
    (void)state;
    check_tokenizer_json("models/llama2c_tokenizer_32000.bin", 32000, 1, "llama32000");
}

/* Not SentencePiece-style: no tokenizer, no error. Broken: an error naming
 * the file. */
static void test_tokenizer_json_other(void **state)
{
    (void)state;
    wmat_model *m = random_model(1, 61), *r;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *dir = tu_tmp("tokjson-other");
    TU_OK(wmat_model_save(m, dir, &sp));
    write_text(dir, "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}");
    TU_OK(wmat_model_load(&r, dir, NULL));
    assert_null(wmat_model_tokenizer(r));
    wmat_model_free(r);
    char tj[1024];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    const char *bad[] = {
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 40}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 1, \"b\": 1}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": -1}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 1}, \"merges\": [\"a\"]}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 1}, \"merges\": [[1, 2]]}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": [], \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(dir, "tokenizer.json", bad[i]);
        assert_fails_naming(no_load(&r, dir), tj);
    }
    /* A sparse but valid vocabulary loads (holes never match). */
    write_text(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"\\u2581\": 4, \"\\u2581a\": 5,"
               " \"b\": 6, \"\\u2581ab\": 7, \"a\": 8}, \"merges\": [\"\\u2581 a\", \"\\u2581a b\"]}}");
    TU_OK(wmat_model_load(&r, dir, NULL));
    wmat_tokenizer *t = wmat_model_tokenizer(r);
    assert_non_null(t);
    int32_t *ids;
    size_t n;
    TU_OK(wmat_tokenizer_encode(t, "ab", 2, 0, 0, &ids, &n));
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 7);
    free(ids);
    wmat_model_free(r);
    wmat_model_free(m);
}

#ifdef WMAT_FAULT_INJECTION
/* Every allocation and I/O call of a load and a save may fail: the call
 * reports it and leaves nothing behind (no leak under ASan, no temporary or
 * partial file under a final name). */
static void test_faults(void **state)
{
    (void)state;
    wmat_model *m = random_model(0, 41), *r;
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    sp.dtype = WMAT_BF16;
    const char *src = tu_tmp("fault-src");
    TU_OK(wmat_model_save(m, src, &sp));
    for (int io = 0; io < 2; io++) {
        for (long k = 1;; k++) {
            wmat__fault_arm(io ? -1 : k, io ? k : -1);
            int rc = wmat_model_load(&r, src, NULL);
            long calls = io ? wmat__fault_io_calls() : wmat__fault_alloc_calls();
            wmat__fault_arm(-1, -1);
            if (rc == WMAT_OK) {
                wmat_model_free(r);
                if (k > calls) {
                    print_message("load: %ld %s calls, each failed once\n", calls, io ? "I/O" : "allocation");
                    break;
                }
            } else {
                assert_true(wmat_last_error()[0] != '\0');
            }
        }
    }
    const char *dst = tu_tmp("fault-dst");
    for (int io = 0; io < 2; io++) {
        for (long k = 1;; k++) {
            wmat__fault_arm(io ? -1 : k, io ? k : -1);
            int rc = wmat_model_save(m, dst, &sp);
            long calls = io ? wmat__fault_io_calls() : wmat__fault_alloc_calls();
            wmat__fault_arm(-1, -1);
            DIR *d = opendir(dst);
            if (d) {
                struct dirent *de;
                while ((de = readdir(d))) assert_null(strstr(de->d_name, ".tmp."));
                closedir(d);
            }
            if (rc == WMAT_OK && k > calls) {
                print_message("save: %ld %s calls, each failed once\n", calls, io ? "I/O" : "allocation");
                break;
            }
        }
        TU_OK(wmat_model_load(&r, dst, NULL));
        wmat_model_free(r);
    }
    wmat_model_free(m);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mix4m_hf_equals_llama2c),
        cmocka_unit_test(test_mix4m_roundtrip_with_tokenizer),
        cmocka_unit_test(test_roundtrip_f32),
        cmocka_unit_test(test_roundtrip_f16_bf16),
        cmocka_unit_test(test_saved_layout),
        cmocka_unit_test(test_save_over_source),
        cmocka_unit_test(test_save_rejects_quantized),
        cmocka_unit_test(test_st_writer_mixed),
        cmocka_unit_test(test_st_truncations),
        cmocka_unit_test(test_st_hostile_headers),
        cmocka_unit_test(test_st_fuzz),
        cmocka_unit_test(test_hf_hostile_tensors),
        cmocka_unit_test(test_hf_hostile_configs),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_tokenizer_json_tok512),
        cmocka_unit_test(test_tokenizer_json_llama32000),
        cmocka_unit_test(test_tokenizer_json_other),
#ifdef WMAT_FAULT_INJECTION
        cmocka_unit_test(test_faults),
#endif
    };
    return tu_run_tests("hf", tests, NULL, NULL);
}
