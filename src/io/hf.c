/* Hugging Face LLaMA directories: config.json + model.safetensors (or shards
 * listed in model.safetensors.index.json), plus wmat's llama2.c-format
 * tokenizer.bin and, for transformers, tokenizer.json and
 * tokenizer_config.json (written by hf_tokenizer.c; a tokenizer.json is
 * read when there is no tokenizer.bin). Weights are used in place from the mappings; q_proj and
 * k_proj stay in HF's rotary row order, flagged, until materialize. */
#include "hf_tokenizer.h"
#include "model_internal.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONFIG_NAME "config.json"
#define WEIGHTS_NAME "model.safetensors"
#define INDEX_NAME "model.safetensors.index.json"
#define TOKENIZER_NAME "tokenizer.bin"
#define TOKENIZER_JSON_NAME WMAT_HF_TOKENIZER_JSON
#define TOKENIZER_CONFIG_NAME WMAT_HF_TOKENIZER_CONFIG



/* ------------------------------------------------------------ config.json */

/* Python's json keeps the last of duplicate keys (cJSON's lookup, the
 * first): read config files the way transformers sees them. */
static const cJSON *get(const cJSON *obj, const char *key)
{
    const cJSON *found = NULL;
    for (const cJSON *e = obj ? obj->child : NULL; e; e = e->next)
        if (e->string && !strcmp(e->string, key)) found = e;
    return found;
}

static int int_value(const cJSON *v, const char *key, long lo, long hi, int *out, const char *what)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        if (cJSON_IsNumber(v))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"%s\" must be an integer in [%ld, %ld], got %g", what,
                                  key, lo, hi, d);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"%s\" must be an integer in [%ld, %ld]", what, key, lo, hi);
    }
    *out = (int)d;
    return WMAT_OK;
}

/* An integer field; when optional, absent or null leaves *out alone. */
static int cfg_int(const cJSON *root, const char *key, bool required, long lo, long hi, int *out, const char *what)
{
    const cJSON *v = get(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return wmat_set_error(WMAT_ERR_FORMAT, "%s: required field \"%s\" is missing", what, key);
        return WMAT_OK;
    }
    return int_value(v, key, lo, hi, out, what);
}

static int cfg_float(const cJSON *root, const char *key, double lo, double hi, float *out, const char *what)
{
    const cJSON *v = get(root, key);
    if (!v || cJSON_IsNull(v)) return WMAT_OK;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d > lo && d < hi))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"%s\" must be a number in (%g, %g)", what, key, lo, hi);
    *out = (float)d;
    return WMAT_OK;
}

/* bos/eos: an integer, a list of integers (Llama 3 lists several eos ids:
 * the first is the one generation stops at), or null. */
static int cfg_token_id(const cJSON *root, const char *key, int *out, const char *what)
{
    const cJSON *v = get(root, key);
    if (cJSON_IsArray(v)) v = v->child;
    if (!v || cJSON_IsNull(v)) return WMAT_OK;
    return int_value(v, key, 0, INT_MAX, out, what);
}

/* Read a small JSON file whole; the cap keeps a mistaken multi-GB file from
 * being slurped into memory. */
#define JSON_MAX_BYTES ((size_t)64 << 20)
static int read_json(const char *path, cJSON **out)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > JSON_MAX_BYTES)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %lld bytes is too large for a JSON file (limit %zu)", path,
                              (long long)st.st_size, JSON_MAX_BYTES);
    char *text = NULL;
    size_t len = 0;
    int rc = wmat_read_file(path, &text, &len);
    if (rc) return rc;
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(text, len + 1, &end, 0);
    if (!*out) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", path, at);
    } else if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not a JSON object", path);
    }
    wmat__free(text);
    return rc;
}

static bool json_true(const cJSON *root, const char *key)
{
    return cJSON_IsTrue(get(root, key));
}

/* Read config.json into cfg; everything a LLaMA runtime needs must be there
 * and everything wmat cannot run (other architectures, rope scaling, biases)
 * is refused by name rather than silently mis-run. */
static int read_config(const char *dir, wmat_config *cfg)
{
    char *path = wmat__path_join(dir, CONFIG_NAME);
    if (!path) return WMAT_ERR_NOMEM;
    cJSON *root = NULL;
    int rc = read_json(path, &root);
    if (rc) goto done;

    const cJSON *arch = get(root, "architectures");
    const cJSON *mt = get(root, "model_type");
    bool llama_arch = false;
    if (cJSON_IsArray(arch))
        for (const cJSON *a = arch->child; a; a = a->next)
            if (cJSON_IsString(a) && (!strcmp(a->valuestring, "LlamaForCausalLM") || !strcmp(a->valuestring, "LLaMAForCausalLM")))
                llama_arch = true;
    if (mt && !cJSON_IsNull(mt) && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "llama"))) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: model_type \"%.64s\" is not supported (wmat reads model_type \"llama\", LlamaForCausalLM)",
                            path, cJSON_IsString(mt) ? mt->valuestring : "?");
        goto done;
    }
    if (cJSON_IsArray(arch) && arch->child && !llama_arch) {
        const cJSON *a0 = arch->child;
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: architecture \"%.64s\" is not supported (wmat reads LlamaForCausalLM)",
                            path, cJSON_IsString(a0) ? a0->valuestring : "?");
        goto done;
    }
    if (!llama_arch && !cJSON_IsString(mt)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: neither \"architectures\" nor \"model_type\" says this is a LLaMA model", path);
        goto done;
    }

    const cJSON *rs = get(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const cJSON *ty = get(rs, "rope_type");
        if (!ty) ty = get(rs, "type");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "default")) {
            rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: rope_scaling type \"%.32s\" is not supported (plain RoPE only)",
                                path, cJSON_IsString(ty) ? ty->valuestring : "?");
            goto done;
        }
    }
    const cJSON *act = get(root, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu"))) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: hidden_act \"%.32s\" is not supported (silu only)", path,
                            cJSON_IsString(act) ? act->valuestring : "?");
        goto done;
    }
    if (json_true(root, "attention_bias") || json_true(root, "mlp_bias")) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: attention_bias / mlp_bias are not supported", path);
        goto done;
    }

    wmat_config c;
    memset(&c, 0, sizeof c);
    /* LlamaConfig's defaults for the optional fields. */
    c.seq_len = 2048;
    c.norm_eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.bos_id = 1;
    c.eos_id = 2;
    int head_dim = 0;
    if ((rc = cfg_int(root, "hidden_size", true, 1, INT_MAX, &c.dim, path)) ||
        (rc = cfg_int(root, "intermediate_size", true, 1, INT_MAX, &c.hidden_dim, path)) ||
        (rc = cfg_int(root, "num_hidden_layers", true, 1, INT_MAX, &c.n_layers, path)) ||
        (rc = cfg_int(root, "num_attention_heads", true, 1, INT_MAX, &c.n_heads, path)) ||
        (rc = cfg_int(root, "num_key_value_heads", false, 1, INT_MAX, &c.n_kv_heads, path)) ||
        (rc = cfg_int(root, "vocab_size", true, 1, INT_MAX, &c.vocab_size, path)) ||
        (rc = cfg_int(root, "max_position_embeddings", false, 1, INT_MAX, &c.seq_len, path)) ||
        (rc = cfg_int(root, "head_dim", false, 1, INT_MAX, &head_dim, path)) ||
        (rc = cfg_float(root, "rms_norm_eps", 0.0, 1.0, &c.norm_eps, path)) ||
        (rc = cfg_float(root, "rope_theta", 0.0, 1e30, &c.rope_theta, path)) ||
        (rc = cfg_token_id(root, "bos_token_id", &c.bos_id, path)) ||
        (rc = cfg_token_id(root, "eos_token_id", &c.eos_id, path)))
        goto done;
    const cJSON *tie = get(root, "tie_word_embeddings");
    if (tie && !cJSON_IsNull(tie) && !cJSON_IsBool(tie)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"tie_word_embeddings\" must be true or false", path);
        goto done;
    }
    c.tied_embeddings = cJSON_IsTrue(tie); /* LlamaConfig's default is false */
    if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
    /* heads wider than the residual stream (a sliced model) */
    if (head_dim && (int64_t)head_dim * c.n_heads != c.dim) {
        if ((int64_t)head_dim * c.n_heads > 65536) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: head_dim %d x %d heads is too wide", path, head_dim, c.n_heads);
            goto done;
        }
        c.attn_dim = head_dim * c.n_heads;
    }
    if ((rc = wmat__config_check(&c, path))) goto done;
    if (head_dim && head_dim != c.head_dim) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: head_dim %d differs from hidden_size / num_attention_heads = %d",
                            path, head_dim, c.head_dim);
        goto done;
    }
    *cfg = c;

done:
    cJSON_Delete(root);
    wmat__free(path);
    return rc;
}

/* ------------------------------------------------------------ weights */

/* Is `name` a tensor of a LLaMA with n_layers layers? *rope: a q/k
 * projection, stored in HF's rotary order. Returns 1 yes, 0 ignore (known
 * but unused: rotary inv_freq buffers), -1 unknown. */
static int classify(const char *name, int n_layers, bool tied, bool *rope)
{
    *rope = false;
    if (!strcmp(name, WMAT_NAME_TOK_EMBD) || !strcmp(name, WMAT_NAME_FINAL_NORM)) return 1;
    /* HF ties lm_head to embed_tokens at load time, so a stored copy is
     * never used: ignore it as transformers does. */
    if (!strcmp(name, WMAT_NAME_CLASSIFIER)) return tied ? 0 : 1;
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1)) return -1;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    long layer = 0;
    while (*p >= '0' && *p <= '9' && layer < 100000) layer = layer * 10 + (*p++ - '0');
    if (*p++ != '.' || layer >= n_layers) return -1;
    if (!strcmp(p, "self_attn.rotary_emb.inv_freq")) return 0;
    for (int w = 0; w < WMAT_W_LAYER_COUNT; w++) {
        size_t k = strlen(wmat__layer_role_names[w]);
        if (!strncmp(p, wmat__layer_role_names[w], k) && !strcmp(p + k, ".weight")) {
            *rope = w == WMAT_W_Q || w == WMAT_W_K;
            return 1;
        }
    }
    return -1;
}

/* Add every LLaMA tensor of one safetensors file to m (borrowed from the
 * mapping), then hand the mapping to m. */
static int add_file_tensors(wmat_model *m, wmat_st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        bool rope;
        int k = classify(t->name, m->cfg.n_layers, m->cfg.tied_embeddings != 0, &rope);
        if (k == 0) continue;
        if (k < 0)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: unexpected tensor for a %d-layer LLaMA (tensor %.200s)", f->path,
                                  m->cfg.n_layers, t->name);
        int wd = wmat__st_to_wmat_dtype(t->dtype);
        if (wd != WMAT_F32 && wd != WMAT_F16 && wd != WMAT_BF16)
            return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: dtype %s is not supported for weights (F32, F16, BF16) (tensor %s)",
                                  f->path, wmat__st_dtype_name(t->dtype), t->name);
        if (t->ndim < 1 || t->ndim > 2)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: rank %d, expected 1 or 2 (tensor %s)", f->path, t->ndim, t->name);
        if (wmat_model_find(m, t->name))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: stored twice across the shards (tensor %s)", f->path, t->name);
        int rc = wmat__model_add_tensor(m, t->name, (wmat_dtype)wd, t->ndim, t->shape, (void *)t->data,
                                        rope ? WMAT_TF_HF_ROPE : 0u);
        if (rc) return rc;
    }
    wmat_map map;
    wmat__st_take_map(f, &map);
    return map.addr ? wmat__model_add_map(m, &map) : WMAT_OK;
}

/* Shard names come from the index file: plain names in the model directory
 * only, so that a hostile index cannot reach ../ or absolute paths. */
static bool safe_shard_name(const char *s)
{
    return *s && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static int load_sharded(wmat_model *m, const char *dir, const char *index_path)
{
    cJSON *root = NULL;
    char **shards = NULL;
    int n_shards = 0;
    wmat_st_file **files = NULL;
    int rc = read_json(index_path, &root);
    if (rc) return rc;
    const cJSON *wm = get(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(wm);
    shards = wmat__calloc((size_t)(n_entries ? n_entries : 1), sizeof *shards);
    files = wmat__calloc((size_t)(n_entries ? n_entries : 1), sizeof *files);
    if (!shards || !files) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    /* Distinct shard names, in first-seen order. */
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->string) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: weight_map value is not a file name (tensor %.200s)", index_path,
                                e->string ? e->string : "?");
            goto done;
        }
        if (!safe_shard_name(e->valuestring)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: shard \"%.200s\" is not a plain file name in the model directory (tensor %.200s)",
                                index_path, e->valuestring, e->string);
            goto done;
        }
        int j = 0;
        while (j < n_shards && strcmp(shards[j], e->valuestring)) j++;
        if (j == n_shards) shards[n_shards++] = e->valuestring;
    }
    for (int j = 0; j < n_shards; j++) {
        char *p = wmat__path_join(dir, shards[j]);
        if (!p) {
            rc = WMAT_ERR_NOMEM;
            goto done;
        }
        rc = wmat__st_open(&files[j], p);
        wmat__free(p);
        if (rc == WMAT_ERR_IO) { /* say who asked for the missing shard */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", wmat_last_error());
            rc = wmat_set_error(rc, "%s: shard %s: %s", index_path, shards[j], msg);
        }
        if (rc) goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        int j = 0;
        while (strcmp(shards[j], e->valuestring)) j++;
        if (!wmat__st_find(files[j], e->string)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %.200s is mapped to %s, which does not contain it", index_path,
                                e->string, files[j]->path);
            goto done;
        }
    }
    for (int j = 0; j < n_shards && !rc; j++) rc = add_file_tensors(m, files[j]);

done:
    if (files)
        for (int j = 0; j < n_shards; j++) wmat__st_close(files[j]);
    wmat__free(files);
    wmat__free(shards);
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------ tokenizer.json */

typedef struct {
    const char *s;
    int id;
} piece_id;

static int cmp_piece(const void *a, const void *b)
{
    return strcmp(((const piece_id *)a)->s, ((const piece_id *)b)->s);
}

/* A LLaMA SentencePiece-BPE tokenizer.json (model.type "BPE" with
 * byte_fallback, as transformers converts tokenizer.model) as llama2.c
 * pieces and scores. HF applies merges by rank; llama2.c merges the adjacent
 * pair whose concatenation scores highest. Scoring each piece -(rank of the
 * first merge that yields it) makes the two agree, and pieces no merge yields
 * get the score below which llama2.c never merges. *out stays NULL for other
 * tokenizers (byte-level BPE such as Llama 3's, WordPiece, ...). */
static int load_tokenizer_json(wmat_tokenizer **out, const char *path, const wmat_config *c)
{
    *out = NULL;
    cJSON *root = NULL;
    const char **pieces = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    piece_id *sorted = NULL;
    char *cat = NULL;
    int rc = read_json(path, &root);
    if (rc) return rc;
    const cJSON *model = get(root, "model");
    const cJSON *ty = get(model, "type");
    if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "BPE") || !cJSON_IsTrue(get(model, "byte_fallback")))
        goto done;
    const cJSON *vocab = get(model, "vocab"), *merges = get(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: model.vocab must be an object and model.merges an array", path);
        goto done;
    }
    const int n = c->vocab_size;
    pieces = wmat__calloc((size_t)n, sizeof *pieces);
    scores = wmat__malloc((size_t)n * sizeof *scores);
    types = wmat__malloc((size_t)n * sizeof *types);
    sorted = wmat__malloc((size_t)n * sizeof *sorted);
    if (!pieces || !scores || !types || !sorted) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %d tokens", path, n);
        goto done;
    }
    const cJSON *unk = get(model, "unk_token");
    for (int i = 0; i < n; i++) {
        scores[i] = -1e10f;
        types[i] = 1;
    }
    for (const cJSON *e = vocab->child; e; e = e->next) {
        double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(d >= 0 && d < n) || d != floor(d)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: id of token \"%.64s\" is not in [0, vocab_size %d)", path,
                                e->string ? e->string : "", n);
            goto done;
        }
        int id = (int)d;
        if (pieces[id]) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: id %d is given to two tokens", path, id);
            goto done;
        }
        pieces[id] = e->string;
        if (cJSON_IsString(unk) && !strcmp(e->string, unk->valuestring)) types[id] = 2;
    }
    const cJSON *added = get(root, "added_tokens");
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
        const cJSON *id = get(e, "id"), *content = get(e, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || !(id->valuedouble >= 0 && id->valuedouble < n))
            continue; /* e.g. a pad token past the embedding rows */
        int k = (int)id->valuedouble;
        if (!pieces[k]) pieces[k] = content->valuestring;
        if (cJSON_IsTrue(get(e, "special")) && types[k] != 2) types[k] = 3;
    }
    int n_sorted = 0;
    size_t max_len = 0;
    for (int i = 0; i < n; i++) {
        if (!pieces[i]) pieces[i] = ""; /* a hole in the ids: never matches */
        size_t len = strlen(pieces[i]);
        if (len > max_len) max_len = len;
        if (len == 6 && !strncmp(pieces[i], "<0x", 3) && pieces[i][5] == '>' && types[i] == 1) types[i] = 6;
        sorted[n_sorted++] = (piece_id){pieces[i], i};
    }
    qsort(sorted, (size_t)n_sorted, sizeof *sorted, cmp_piece);
    cat = wmat__malloc(2 * max_len + 2);
    if (!cat) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    long rank = 0;
    for (const cJSON *e = merges->child; e; e = e->next, rank++) {
        /* "a b" (tokenizers < 0.20) or ["a", "b"] */
        const char *a = NULL, *b = NULL;
        size_t la = 0;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = e->valuestring;
                la = (size_t)(sp - a);
                b = sp + 1;
            }
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring;
            la = strlen(a);
            b = e->child->next->valuestring;
        }
        if (!a) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: merge %ld is not \"a b\" or [\"a\", \"b\"]", path, rank);
            goto done;
        }
        size_t lb = strlen(b);
        if (la + lb > 2 * max_len) continue; /* longer than any piece */
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb + 1);
        piece_id key = {cat, 0};
        const piece_id *hit = bsearch(&key, sorted, (size_t)n_sorted, sizeof *sorted, cmp_piece);
        if (hit && scores[hit->id] == -1e10f) scores[hit->id] = -(float)rank;
    }
    rc = wmat_tokenizer_from_vocab(out, n, pieces, NULL, scores, types, c->bos_id, c->eos_id);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        rc = wmat_set_error(rc, "%s: %s", path, msg);
    }

done:
    wmat__free(cat);
    wmat__free(sorted);
    wmat__free(types);
    wmat__free(scores);
    wmat__free(pieces);
    cJSON_Delete(root);
    return rc;
}

/* params->tokenizer_path, else tokenizer.bin (what wmat writes), else a
 * SentencePiece-style tokenizer.json, else none. */
static int load_tokenizer(wmat_model *m, const char *dir, const wmat_load_params *p)
{
    wmat_tokenizer *tok = NULL;
    int rc = WMAT_OK;
    if (p && p->tokenizer_path) {
        rc = wmat_tokenizer_load_llama2c(&tok, p->tokenizer_path, m->cfg.vocab_size);
    } else {
        char *bin = wmat__path_join(dir, TOKENIZER_NAME), *json = wmat__path_join(dir, TOKENIZER_JSON_NAME);
        if (!bin || !json) rc = WMAT_ERR_NOMEM;
        else if (wmat__is_file(bin)) rc = wmat_tokenizer_load_llama2c(&tok, bin, m->cfg.vocab_size);
        else if (wmat__is_file(json)) rc = load_tokenizer_json(&tok, json, &m->cfg);
        wmat__free(bin);
        wmat__free(json);
    }
    if (!rc && tok) wmat_model_set_tokenizer(m, tok);
    return rc;
}

int wmat__hf_load(wmat_model **out, const char *dir, const wmat_load_params *p)
{
    *out = NULL;
    wmat_config cfg;
    int rc = read_config(dir, &cfg);
    if (rc) return rc;
    wmat_model *m = NULL;
    char *single = NULL, *index = NULL;
    if ((rc = wmat__model_new(&m, &cfg, WMAT_FMT_HF, dir))) return rc;
    single = wmat__path_join(dir, WEIGHTS_NAME);
    index = wmat__path_join(dir, INDEX_NAME);
    if (!single || !index) {
        rc = WMAT_ERR_NOMEM;
        goto fail;
    }
    /* transformers prefers the single file too when both exist. */
    if (wmat__is_file(single)) {
        wmat_st_file *f;
        if ((rc = wmat__st_open(&f, single))) goto fail;
        rc = add_file_tensors(m, f);
        wmat__st_close(f);
    } else if (wmat__is_file(index)) {
        rc = load_sharded(m, dir, index);
    } else {
        rc = wmat_set_error(WMAT_ERR_IO, "%s: no %s or %s (wmat reads safetensors weights only)", dir, WEIGHTS_NAME,
                            INDEX_NAME);
    }
    if (rc) goto fail;
    if ((rc = wmat__model_bind(m))) goto fail;
    if ((rc = load_tokenizer(m, dir, p))) goto fail;
    wmat__free(single);
    wmat__free(index);
    *out = m;
    return WMAT_OK;

fail:
    wmat__free(single);
    wmat__free(index);
    wmat_model_free(m);
    return rc;
}

/* ------------------------------------------------------------ writing */

/* The shortest decimal that reads back as the same float ("1e-05", not
 * "9.99999975e-06"), as Python writes the config values. */
static void fmt_float(char *buf, size_t n, float v)
{
    if (v == floorf(v) && fabsf(v) < 1e15f) {
        snprintf(buf, n, "%.1f", (double)v);
        for (char *q = buf; *q; q++)
            if (*q == ',') *q = '.';
        return;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    /* JSON wants '.', whatever LC_NUMERIC the application chose. */
    for (char *q = buf; *q; q++)
        if (*q == ',') *q = '.';
}

static const char *torch_dtype_name(wmat_dtype d)
{
    return d == WMAT_F16 ? "float16" : d == WMAT_BF16 ? "bfloat16" : "float32";
}

/* Build config.json (the fields LlamaConfig reads, in its order); `extra`
 * (may be NULL) is inserted as further members, e.g. a quantization_config. */
int wmat__hf_config_json(const wmat_config *c, wmat_dtype dt, const char *extra, char *buf, size_t n)
{
    char eps[32], theta[32];
    fmt_float(eps, sizeof eps, c->norm_eps);
    fmt_float(theta, sizeof theta, c->rope_theta);
    int k = snprintf(buf, n,
                     "{\n"
                     "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                     "  \"model_type\": \"llama\",\n"
                     "  \"hidden_size\": %d,\n"
                     "  \"intermediate_size\": %d,\n"
                     "  \"num_hidden_layers\": %d,\n"
                     "  \"num_attention_heads\": %d,\n"
                     "  \"num_key_value_heads\": %d,\n"
                     "  \"head_dim\": %d,\n"
                     "  \"vocab_size\": %d,\n"
                     "  \"max_position_embeddings\": %d,\n"
                     "  \"rms_norm_eps\": %s,\n"
                     "  \"rope_theta\": %s,\n"
                     "  \"rope_scaling\": null,\n"
                     "  \"hidden_act\": \"silu\",\n"
                     "  \"attention_bias\": false,\n"
                     "  \"mlp_bias\": false,\n"
                     "  \"tie_word_embeddings\": %s,\n"
                     "  \"bos_token_id\": %d,\n"
                     "  \"eos_token_id\": %d,\n"
                     "  \"torch_dtype\": \"%s\"%s%s\n"
                     "}\n",
                     c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
                     c->seq_len, eps, theta, c->tied_embeddings ? "true" : "false", c->bos_id, c->eos_id,
                     torch_dtype_name(dt), extra ? ",\n  " : "", extra ? extra : "");
    return k > 0 && (size_t)k < n ? k : -1;
}

typedef struct {
    const wmat_model *m;
    const wmat_tensor *t;
    float *fill;    /* the model's tensors produced while saving, shared */
    wmat_dtype dt;
    int rope_heads; /* > 0: permute rows to HF's rotary order */
    int head_dim;
    float *perm;    /* scratch of the largest q/k, shared */
} save_src;

static int fill_tensor(void *user, const wmat_st_entry *e, void *dst)
{
    const save_src *s = user;
    const float *x;
    int rc = wmat__tensor_f32_for_save(s->m, s->t, s->fill, &x);
    if (rc) return rc;
    uint64_t n = (uint64_t)wmat_tensor_nelem(s->t);
    if (s->rope_heads) {
        wmat__rope_permute_hf(s->perm, x, s->rope_heads, s->head_dim, s->t->shape[1]);
        x = s->perm;
    }
    rc = wmat_from_f32(dst, s->dt, x, n);
    wmat__model_release(s->m, s->t); /* out of core: the source is not read again */
    return rc;
}


int wmat__hf_save(wmat_model *m, const char *dir, const wmat_save_params *p)
{
    return wmat__hf_save_with(m, dir, p, NULL);
}

int wmat__hf_save_with(wmat_model *m, const char *dir, const wmat_save_params *p, const wmat__hf_packed_hook *hook)
{
    wmat_dtype dt = p ? p->dtype : WMAT_F32;
    if (dt != WMAT_F32 && dt != WMAT_F16 && dt != WMAT_BF16) {
        const wmat_dtype_traits *tr = wmat_dtype_info(dt);
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: HF output stores f32, f16 or bf16 weights, not %s (quantized safetensors layouts are library-specific: use GGUF)",
                              dir, tr ? tr->name : "an unknown type");
    }
    if (!m->layer_idx) {
        int rc = wmat__model_bind(m);
        if (rc) return rc;
    }
    const wmat_config *c = &m->cfg;
    const int n_max = 3 + c->n_layers * WMAT_W_LAYER_COUNT, n_ent = n_max * (hook ? hook->max_entries : 1);
    wmat_st_entry *ent = wmat__calloc((size_t)n_ent, sizeof *ent);
    save_src *src = wmat__calloc((size_t)n_ent, sizeof *src); /* indexed by entry */
    char *cfg_text = wmat__malloc(4096);
    char *st_path = wmat__path_join(dir, WEIGHTS_NAME), *cfg_path = wmat__path_join(dir, CONFIG_NAME), *tok_path = wmat__path_join(dir, TOKENIZER_NAME);
    char *extra_path = hook && hook->extra_file ? wmat__path_join(dir, hook->extra_file) : NULL;
    char *tj_path = wmat__path_join(dir, TOKENIZER_JSON_NAME), *tc_path = wmat__path_join(dir, TOKENIZER_CONFIG_NAME);
    char *tj_text = NULL, *tc_text = NULL;
    size_t tj_len = 0, tc_len = 0;
    float *perm = NULL, *fill = NULL;
    wmat_afile st_af = {0}, cfg_af = {0}, extra_af = {0}, tj_af = {0}, tc_af = {0};
    bool st_open = false, cfg_open = false, extra_open = false, tj_open = false, tc_open = false;
    int rc = WMAT_OK, n = 0;
    if (!ent || !src || !cfg_text || !st_path || !cfg_path || !tok_path || !tj_path || !tc_path ||
        (hook && hook->extra_file && !extra_path)) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }

    /* What HF's LlamaForCausalLM state dict holds: the tied classifier is
     * not stored (the same as transformers' save_pretrained). */
    const wmat_tensor *list[3] = {wmat_model_tok_embeddings(m), wmat_model_final_norm(m),
                                  m->classifier_idx >= 0 ? &m->tensors[m->classifier_idx] : NULL};
    int64_t perm_max = 0;
    for (int i = 0; i < n_max; i++) {
        const wmat_tensor *t;
        int rope_heads = 0;
        if (i < 3) {
            t = list[i];
            if (!t) continue;
        } else {
            int l = (i - 3) / WMAT_W_LAYER_COUNT, w = (i - 3) % WMAT_W_LAYER_COUNT;
            t = wmat_model_layer_tensor(m, l, (wmat_layer_weight)w);
            if (w == WMAT_W_Q) rope_heads = c->n_heads;
            if (w == WMAT_W_K) rope_heads = c->n_kv_heads;
        }
        if (hook && t->dtype == WMAT_QPACKED && i >= 3) {
            /* the hook writes the packed weight as its own tensors */
            int k = hook->entries(hook->user, m, t, rope_heads, c->head_dim, &ent[n]);
            if (k < 0) {
                rc = k;
                goto done;
            }
            n += k;
            continue;
        }
        if (t->dtype == WMAT_OBJ || (t->flags & WMAT_TF_HF_ROPE) || t->ndim > 2) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not materialized (f32, canonical layout)", dir, t->name);
            goto done;
        }
        wmat_st_entry *e = &ent[n];
        save_src *s = &src[n];
        n++;
        e->name = t->name;
        e->ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e->shape[d] = t->shape[d];
        s->m = m;
        s->t = t;
        s->dt = t->ndim == 2 ? dt : WMAT_F32; /* norms stay f32 (wmat_save_params) */
        s->rope_heads = rope_heads;
        s->head_dim = c->head_dim;
        e->dtype = (wmat_st_dtype)wmat__st_from_wmat_dtype(s->dt);
        if (s->dt == WMAT_F32 && !rope_heads && t->data && t->dtype == WMAT_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
            e->data = t->data;
            e->release = wmat__model_map_at(m, t->data); /* out of core: its pages go once written */
        } else {
            e->fill = fill_tensor;
            e->user = s;
        }
        if (rope_heads && wmat_tensor_nelem(t) > perm_max) perm_max = wmat_tensor_nelem(t);
    }
    if (perm_max) {
        perm = wmat__aligned_alloc((size_t)perm_max * sizeof(float));
        if (!perm) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (int i = 0; i < n; i++) src[i].perm = perm;
    }
    const int64_t n_fill = wmat__model_max_fill(m);
    if (n_fill) {
        fill = wmat__aligned_alloc((size_t)n_fill * sizeof(float));
        if (!fill) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (int i = 0; i < n; i++) src[i].fill = fill;
    }
    int cfg_len = wmat__hf_config_json(c, dt, hook ? hook->config_extra : NULL, cfg_text, 4096);
    if (cfg_len < 0) {
        rc = wmat_set_error(WMAT_ERR_INTERNAL, "%s: config.json does not fit its buffer", dir);
        goto done;
    }
    /* The tokenizer for transformers / tokenizers as well (hf_tokenizer.c);
     * a model without one writes none of the tokenizer files. */
    if (m->tok && ((rc = wmat__hf_tokenizer_json(m->tok, &tj_text, &tj_len)) ||
                   (rc = wmat__hf_tokenizer_config_json(m->tok, c->seq_len, &tc_text, &tc_len)))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        rc = wmat_set_error(rc, "%s: %s", dir, msg);
        goto done;
    }

    if ((rc = wmat__make_dirs(dir))) goto done;
    /* Write every file to its temporary first and rename only when all are
     * complete, so a failure leaves the previous directory contents. */
    static const wmat_st_meta meta[1] = {{"format", "pt"}};
    if ((rc = wmat__afile_open(&st_af, st_path))) goto done;
    st_open = true;
    if ((rc = wmat__st_write_afile(&st_af, ent, n, meta, 1))) goto done;
    if ((rc = wmat__afile_open(&cfg_af, cfg_path))) goto done;
    cfg_open = true;
    if ((rc = wmat__afile_write(&cfg_af, cfg_text, (size_t)cfg_len))) goto done;
    if (extra_path) {
        if ((rc = wmat__afile_open(&extra_af, extra_path))) goto done;
        extra_open = true;
        if ((rc = wmat__afile_write(&extra_af, hook->extra_text, strlen(hook->extra_text)))) goto done;
    }
    if (tj_text) {
        if ((rc = wmat__afile_open(&tj_af, tj_path))) goto done;
        tj_open = true;
        if ((rc = wmat__afile_write(&tj_af, tj_text, tj_len))) goto done;
        if ((rc = wmat__afile_open(&tc_af, tc_path))) goto done;
        tc_open = true;
        if ((rc = wmat__afile_write(&tc_af, tc_text, tc_len))) goto done;
    }
    if (m->tok && (rc = wmat_tokenizer_save_llama2c(m->tok, tok_path))) goto done;
    st_open = false;
    if ((rc = wmat__afile_commit(&st_af))) goto done;
    cfg_open = false;
    if ((rc = wmat__afile_commit(&cfg_af))) goto done;
    if (extra_open) {
        extra_open = false;
        if ((rc = wmat__afile_commit(&extra_af))) goto done;
    }
    if (tj_open) {
        tj_open = false;
        if ((rc = wmat__afile_commit(&tj_af))) goto done;
    }
    if (tc_open) {
        tc_open = false;
        rc = wmat__afile_commit(&tc_af);
    }

done:
    if (tj_open) wmat__afile_abort(&tj_af);
    if (tc_open) wmat__afile_abort(&tc_af);
    wmat__free(tj_text);
    wmat__free(tc_text);
    wmat__free(tj_path);
    wmat__free(tc_path);
    if (st_open) wmat__afile_abort(&st_af);
    if (cfg_open) wmat__afile_abort(&cfg_af);
    if (extra_open) wmat__afile_abort(&extra_af);
    wmat__free(extra_path);
    wmat__free(perm);
    wmat__free(fill);
    wmat__free(ent);
    wmat__free(src);
    wmat__free(cfg_text);
    wmat__free(st_path);
    wmat__free(cfg_path);
    wmat__free(tok_path);
    return rc;
}
