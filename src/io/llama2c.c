/* llama2.c "v0" checkpoints: 7 int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; vocab < 0 means a separate classifier),
 * then fp32 weights grouped by kind across layers, the unused RoPE tables,
 * and the classifier when not shared. */
#include "model_internal.h"
#include "core/shapes.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Order of the per-layer groups in the file. */
static const struct {
    wmat_layer_weight role;
    int after_final_norm; /* unused: all layer groups precede rms_final */
} g_order[] = {
    {WMAT_W_ATTN_NORM, 0}, {WMAT_W_Q, 0}, {WMAT_W_K, 0}, {WMAT_W_V, 0}, {WMAT_W_O, 0},
    {WMAT_W_FFN_NORM, 0}, {WMAT_W_GATE, 0}, {WMAT_W_DOWN, 0}, {WMAT_W_UP, 0},
};


/* Tokenizer beside a checkpoint: STEM_tokV.bin, tokV.bin, tokenizer.bin. */
static int find_tokenizer(const char *path, int vocab, char *out, size_t n)
{
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    const char *base = path + dirlen;
    const char *dot = strrchr(base, '.');
    int stemlen = dot ? (int)(dot - base) : (int)strlen(base);
    snprintf(out, n, "%.*s%.*s_tok%d.bin", dirlen, path, stemlen, base, vocab);
    if (wmat__is_file(out)) return 1;
    snprintf(out, n, "%.*stok%d.bin", dirlen, path, vocab);
    if (wmat__is_file(out)) return 1;
    snprintf(out, n, "%.*stokenizer.bin", dirlen, path);
    if (wmat__is_file(out)) return 1;
    return 0;
}

int wmat__llama2c_load(wmat_model **out, const char *path, const wmat_load_params *p)
{
    *out = NULL;
    wmat_map map;
    int rc = wmat__map_file(path, &map);
    if (rc) return rc;
    if (map.len < 28) {
        size_t flen = map.len;
        wmat__unmap(&map);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: too small for a llama2.c checkpoint (%zu bytes, the header alone is 28)",
                              path, flen);
    }
    int32_t h[7];
    memcpy(h, map.addr, sizeof h);
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.tied_embeddings = h[5] > 0;
    c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] > 0 ? h[5] : -h[5]);
    c.seq_len = h[6];
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = 1;
    c.eos_id = 2;
    if (c.n_kv_heads <= 0) {
        wmat__unmap(&map);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad llama2.c header: n_kv_heads %d", path, c.n_kv_heads);
    }
    rc = wmat__config_check(&c, path);
    if (rc) {
        wmat__unmap(&map);
        return wmat_set_error(rc, "%s (not a llama2.c checkpoint?)", wmat_last_error());
    }
    /* Expected size, in floats; all products fit easily in 64 bits given the
     * caps in wmat__config_check, but keep the arithmetic checked anyway. */
    uint64_t floats = 0, t;
    const uint64_t L = (uint64_t)c.n_layers;
    for (size_t i = 0; i < sizeof g_order / sizeof g_order[0]; i++) {
        int64_t d0, d1;
        wmat__role_shape(&c, g_order[i].role, &d0, &d1);
        if (!wmat__mul_ok(L, (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1), &t) || !wmat__add_ok(floats, t, &floats)) goto overflow;
    }
    uint64_t emb = (uint64_t)c.vocab_size * (uint64_t)c.dim;
    if (!wmat__add_ok(floats, emb + (uint64_t)c.dim, &floats)) goto overflow;
    uint64_t rope = (uint64_t)c.seq_len * (uint64_t)c.head_dim; /* cos + sin tables, head_dim/2 each */
    if (!wmat__add_ok(floats, rope, &floats)) goto overflow;
    if (!c.tied_embeddings && !wmat__add_ok(floats, emb, &floats)) goto overflow;
    if (floats > (UINT64_MAX - 28) / 4) goto overflow;
    uint64_t expected = 28 + floats * 4;
    if ((uint64_t)map.len != expected) {
        size_t flen = map.len;
        wmat__unmap(&map);
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: file is %zu bytes but its header (dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d, seq_len %d) implies %llu: %s",
                              path, flen, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, h[5], c.seq_len,
                              (unsigned long long)expected,
                              (uint64_t)flen < expected ? "truncated or not a llama2.c checkpoint" : "trailing bytes, not a llama2.c v0 checkpoint");
    }

    wmat_model *m = NULL;
    rc = wmat__model_new(&m, &c, WMAT_FMT_LLAMA2C, path);
    if (rc) {
        wmat__unmap(&map);
        return rc;
    }
    float *base = (float *)((char *)map.addr + 28);
    rc = wmat__model_add_map(m, &map);
    float *ptr = base;
    int64_t shape[2] = {c.vocab_size, c.dim};
    if (!rc) rc = wmat__model_add_tensor(m, WMAT_NAME_TOK_EMBD, WMAT_F32, 2, shape, ptr, 0);
    ptr += emb;
    for (size_t i = 0; i < sizeof g_order / sizeof g_order[0] && !rc; i++) {
        int64_t d0, d1;
        wmat__role_shape(&c, g_order[i].role, &d0, &d1);
        for (int l = 0; l < c.n_layers && !rc; l++) {
            char name[WMAT_NAME_MAX];
            wmat__layer_tensor_name(name, sizeof name, l, g_order[i].role);
            int64_t s[2] = {d0, d1};
            rc = wmat__model_add_tensor(m, name, WMAT_F32, d1 ? 2 : 1, s, ptr, 0);
            ptr += d0 * (d1 ? d1 : 1);
        }
    }
    int64_t sn[1] = {c.dim};
    if (!rc) rc = wmat__model_add_tensor(m, WMAT_NAME_FINAL_NORM, WMAT_F32, 1, sn, ptr, 0);
    ptr += c.dim;
    ptr += rope;
    if (!rc && !c.tied_embeddings) rc = wmat__model_add_tensor(m, WMAT_NAME_CLASSIFIER, WMAT_F32, 2, shape, ptr, 0);
    if (!rc) rc = wmat__model_bind(m);

    if (!rc) {
        char tp[4096];
        const char *tok_path = p ? p->tokenizer_path : NULL;
        if (!tok_path && find_tokenizer(path, c.vocab_size, tp, sizeof tp)) tok_path = tp;
        if (tok_path) {
            wmat_tokenizer *tok = NULL;
            rc = wmat_tokenizer_load_llama2c(&tok, tok_path, c.vocab_size);
            if (!rc) wmat_model_set_tokenizer(m, tok);
        }
    }
    if (rc) {
        wmat_model_free(m);
        return rc;
    }
    *out = m;
    return WMAT_OK;

overflow:
    wmat__unmap(&map);
    return wmat_set_error(WMAT_ERR_FORMAT, "%s: header sizes overflow", path);
}

/* fill: the model's buffer for tensors produced while saving (or NULL). */
static int write_tensor(wmat_afile *af, const wmat_model *m, const wmat_tensor *t, float *fill)
{
    const float *x;
    int rc = wmat__tensor_f32_for_save(m, t, fill, &x);
    if (!rc) rc = wmat__afile_write(af, x, (size_t)wmat_tensor_nelem(t) * sizeof(float));
    wmat__model_release(m, t); /* out of core: the source is not read again */
    return rc;
}

int wmat__llama2c_save(wmat_model *m, const char *path, const wmat_save_params *p)
{
    if (p->dtype != WMAT_F32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: llama2.c checkpoints hold f32 weights only (asked for %s)", path,
                              wmat_dtype_info(p->dtype) ? wmat_dtype_info(p->dtype)->name : "?");
    const wmat_config *c = &m->cfg;
    if (c->rope_theta != 10000.0f || c->norm_eps != 1e-5f)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: llama2.c checkpoints cannot record rope_theta %g / rms_norm_eps %g (run.c assumes 10000 and 1e-5)",
                              path, c->rope_theta, c->norm_eps);
    int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                    c->tied_embeddings ? c->vocab_size : -c->vocab_size, c->seq_len};
    const int64_t n_fill = wmat__model_max_fill(m);
    float *fill = n_fill ? wmat__aligned_alloc((size_t)n_fill * sizeof(float)) : NULL;
    if (n_fill && !fill) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a %lld-value tensor", path, (long long)n_fill);
    wmat_afile af;
    int rc = wmat__afile_open(&af, path);
    if (rc) {
        wmat__free(fill);
        return rc;
    }
    rc = wmat__afile_write(&af, h, sizeof h);
    if (!rc) rc = write_tensor(&af, m, wmat_model_tok_embeddings(m), fill);
    for (size_t i = 0; i < sizeof g_order / sizeof g_order[0] && !rc; i++)
        for (int l = 0; l < c->n_layers && !rc; l++) rc = write_tensor(&af, m, wmat_model_layer_tensor(m, l, g_order[i].role), fill);
    if (!rc) rc = write_tensor(&af, m, wmat_model_final_norm(m), fill);
    /* RoPE tables as llama2.c's export writes them (run.c ignores them). */
    const int half = c->head_dim / 2;
    if (half > 4096) {
        wmat__afile_abort(&af);
        wmat__free(fill);
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: head dimension %d too large for a llama2.c file", path, c->head_dim);
    }
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (int pos = 0; pos < c->seq_len && !rc; pos++) {
            float row[2][4096];
            wmat__rope_tables(c, pos, 1, row[0], row[1]);
            rc = wmat__afile_write(&af, row[pass], (size_t)half * sizeof(float));
        }
    }
    if (!rc && !c->tied_embeddings) rc = write_tensor(&af, m, wmat_model_classifier(m), fill);
    wmat__free(fill);
    if (rc) {
        wmat__afile_abort(&af);
        return rc;
    }
    /* The tokenizer (itself atomic) goes first, so that a failure leaves no
     * checkpoint under the final name (issue 7, tests/test_faults.c). */
    if (m->tok) {
        char tp[4096];
        const char *tok_path = p->tokenizer_path;
        if (!tok_path) {
            const char *slash = strrchr(path, '/');
            int dirlen = slash ? (int)(slash - path + 1) : 0;
            const char *base = path + dirlen;
            const char *dot = strrchr(base, '.');
            int stemlen = dot ? (int)(dot - base) : (int)strlen(base);
            snprintf(tp, sizeof tp, "%.*s%.*s_tok%d.bin", dirlen, path, stemlen, base, c->vocab_size);
            tok_path = tp;
        }
        rc = wmat_tokenizer_save_llama2c(m->tok, tok_path);
        if (rc) {
            wmat__afile_abort(&af);
            return rc;
        }
    }
    return wmat__afile_commit(&af);
}
