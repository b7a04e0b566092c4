/* Pieces around training: random init, config presets and JSON configs,
 * a byte-level tokenizer, tokenizer copies. */
#include "train.h"

#include "../io/model_internal.h"
#include "../model/gmm_mask.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wmat_model_init_random(wmat_model *m, uint64_t seed, float std)
{
    const wmat_config *c = wmat_model_config(m);
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    const float res_std = std / sqrtf(2.0f * (float)c->n_layers);
    wmat_rng gr; /* the Gaussian-mixture mask's own stream */
    wmat_rng_seed(&gr, seed ^ 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->dtype != WMAT_F32) return wmat_set_error(WMAT_ERR_INVALID, "init: tensor %s is not f32", t->name);
        if (!(t->flags & WMAT_TF_OWNED)) return wmat_set_error(WMAT_ERR_INVALID, "init: tensor %s is read-only", t->name);
        float *d = t->data;
        int64_t n = wmat_tensor_nelem(t);
        const size_t nl = strlen(t->name);
        if (c->gmm_kernels && t->ndim == 1 && nl > 9 && !strcmp(t->name + nl - 9, ".gmm_mask")) {
            /* the Gaussian-mixture mask: the paper's init, from its own stream
             * (the other weights are those of the same seed without a mask) */
            wmat__gmm_init(d, c->n_heads, c->gmm_kernels, &gr);
            continue;
        }
        if (t->ndim == 1) {
            for (int64_t j = 0; j < n; j++) d[j] = 1.0f;
            continue;
        }
        const size_t len = strlen(t->name);
        int resid = (len > 14 && !strcmp(t->name + len - 14, "o_proj.weight")) ||
                    (len > 17 && !strcmp(t->name + len - 17, "down_proj.weight"));
        const float s = resid ? res_std : std;
        for (int64_t j = 0; j < n; j++) d[j] = s * wmat_rng_normal(&r);
    }
    return WMAT_OK;
}

static int preset(const char *name, wmat_config *c)
{
    /* vocab_size and seq_len keep the caller's when set */
    struct { const char *name; int dim, hidden, layers, heads, kv, seq; } ps[] = {
        {"tiny", 64, 172, 5, 8, 4, 256},   /* stories260K's shape */
        {"small", 128, 352, 4, 4, 4, 256}, /* the demo's default (hidden a multiple of 32 for packed quantizers) */
        {"mix4m", 256, 704, 6, 8, 4, 256}, /* the shared mix4m's shape */
    };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (!strcmp(name, ps[i].name)) {
            c->dim = ps[i].dim;
            c->hidden_dim = ps[i].hidden;
            c->n_layers = ps[i].layers;
            c->n_heads = ps[i].heads;
            c->n_kv_heads = ps[i].kv;
            if (c->seq_len <= 0) c->seq_len = ps[i].seq;
            if (c->vocab_size <= 0) c->vocab_size = 512;
            return 1;
        }
    return 0;
}

static int json_int(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : def;
}

int wmat_train_config(const char *name_or_path, wmat_config *cfg)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = cfg->vocab_size;
    c.seq_len = cfg->seq_len;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.tied_embeddings = 1;
    c.bos_id = 1;
    c.eos_id = 2;
    if (!preset(name_or_path, &c)) {
        char *text;
        size_t len;
        int rc = wmat_read_file(name_or_path, &text, &len);
        if (rc)
            return wmat_set_error(WMAT_ERR_INVALID, "config '%s' is neither a preset (tiny, small, mix4m) nor a readable JSON file",
                                  name_or_path);
        cJSON *j = cJSON_ParseWithLength(text, len);
        free(text);
        if (!j || !cJSON_IsObject(j)) {
            cJSON_Delete(j);
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: not a JSON object", name_or_path);
        }
        c.dim = json_int(j, "hidden_size", json_int(j, "dim", 0));
        c.hidden_dim = json_int(j, "intermediate_size", json_int(j, "hidden_dim", 0));
        c.n_layers = json_int(j, "num_hidden_layers", json_int(j, "n_layers", 0));
        c.n_heads = json_int(j, "num_attention_heads", json_int(j, "n_heads", 0));
        c.n_kv_heads = json_int(j, "num_key_value_heads", json_int(j, "n_kv_heads", c.n_heads));
        int v = json_int(j, "vocab_size", 0);
        if (v > 0 && c.vocab_size <= 0) c.vocab_size = v;
        int s = json_int(j, "max_position_embeddings", json_int(j, "max_seq_len", 0));
        if (s > 0 && c.seq_len <= 0) c.seq_len = s;
        const cJSON *th = cJSON_GetObjectItemCaseSensitive(j, "rope_theta");
        if (cJSON_IsNumber(th)) c.rope_theta = (float)th->valuedouble;
        const cJSON *ep = cJSON_GetObjectItemCaseSensitive(j, "rms_norm_eps");
        if (cJSON_IsNumber(ep)) c.norm_eps = (float)ep->valuedouble;
        const cJSON *tw = cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings");
        if (cJSON_IsBool(tw)) c.tied_embeddings = cJSON_IsTrue(tw);
        cJSON_Delete(j);
        if (c.seq_len <= 0) c.seq_len = 256;
    }
    if (c.vocab_size <= 0) c.vocab_size = 512;
    int rc = wmat__config_check(&c, name_or_path);
    if (rc) return rc;
    *cfg = c;
    return WMAT_OK;
}

int wmat_tokenizer_bytes(wmat_tokenizer **out)
{
    enum { N = 259 };
    char store[N][8]; /* from_vocab copies the pieces */
    const char *pieces[N];
    size_t lens[N];
    float scores[N];
    int32_t types[N];
    const char *special[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < N; i++) {
        char buf[8];
        if (i < 3) {
            snprintf(buf, sizeof buf, "%s", special[i]);
            types[i] = i == 0 ? 2 : 3;
        } else {
            int b = i - 3;
            if (b >= 32 && b < 127) {
                buf[0] = (char)b;
                buf[1] = 0;
                types[i] = 1;
            } else {
                snprintf(buf, sizeof buf, "<0x%02X>", b);
                types[i] = 6;
            }
        }
        pieces[i] = buf;
        lens[i] = strlen(buf);
        scores[i] = 0.0f;
        memcpy(store[i], buf, sizeof buf);
        pieces[i] = store[i];
    }
    return wmat_tokenizer_from_vocab(out, N, pieces, lens, scores, types, 1, 2);
}

int wmat_tokenizer_clone(const wmat_tokenizer *t, wmat_tokenizer **out)
{
    const int n = wmat_tokenizer_vocab_size(t);
    const char **pieces = wmat__malloc((size_t)n * sizeof(char *));
    size_t *lens = wmat__malloc((size_t)n * sizeof(size_t));
    float *scores = wmat__malloc((size_t)n * sizeof(float));
    int32_t *types = wmat__malloc((size_t)n * sizeof(int32_t));
    int rc;
    if (!pieces || !lens || !scores || !types) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "tokenizer copy: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        pieces[i] = wmat_tokenizer_piece(t, i, &lens[i]);
        scores[i] = wmat_tokenizer_score(t, i);
        types[i] = wmat_tokenizer_type(t, i);
    }
    rc = wmat_tokenizer_from_vocab(out, n, pieces, lens, scores, types, wmat_tokenizer_bos(t), wmat_tokenizer_eos(t));
done:
    wmat__free(pieces);
    wmat__free(lens);
    wmat__free(scores);
    wmat__free(types);
    return rc;
}
