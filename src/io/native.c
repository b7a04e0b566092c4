/* Files of quantized models: the native directory (write, detect, load
 * memory-mapped) and GGUF export of the schemes that are ggml types.
 * Format: docs/_formats_quant.md. */
#include "model_internal.h"
#include "safetensors.h"
#include "wop/qstore.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define Q_CONFIG "config.json"
#define Q_QCONFIG "quant_config.json"
#define Q_WEIGHTS "model.safetensors"
#define Q_TOKENIZER "tokenizer.bin"
#define Q_FORMAT "wmat-qpacked"
#define Q_VERSION 1
#define JSON_MAX ((size_t)64 << 20)




int wmat__quant_dir_detect(const char *dir)
{
    char *p = wmat__path_join(dir, Q_QCONFIG);
    int yes = p && wmat__is_file(p);
    wmat__free(p);
    return yes;
}

/* ------------------------------------------------------------ JSON helpers */

static int read_json(const char *path, cJSON **out)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > JSON_MAX)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: too large for a JSON file", path);
    char *text = NULL;
    size_t len = 0;
    int rc = wmat_read_file(path, &text, &len);
    if (rc) return rc;
    *out = cJSON_ParseWithLength(text, len);
    wmat__free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return WMAT_OK;
}

/* Integer field in [lo, hi]; absent/null: *out unchanged unless required. */
static int jint(const cJSON *o, const char *key, int required, double lo, double hi, int64_t *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return wmat_set_error(WMAT_ERR_FORMAT, "%s: required field \"%s\" is missing", what, key);
        return WMAT_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"%s\" must be an integer in [%g, %g]", what, key, lo, hi);
    *out = (int64_t)d;
    return WMAT_OK;
}

static int read_config(const char *dir, wmat_config *cfg)
{
    char *path = wmat__path_join(dir, Q_CONFIG);
    if (!path) return WMAT_ERR_NOMEM;
    cJSON *root = NULL;
    int rc = read_json(path, &root);
    if (rc) goto done;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "llama")) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: model_type must be \"llama\"", path);
        goto done;
    }
    int64_t v[8] = {0, 0, 0, 0, 0, 0, 2048, 0}, bos = 1, eos = 2;
    static const char *const keys[8] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "vocab_size", "max_position_embeddings", NULL};
    for (int i = 0; i < 7 && !rc; i++) rc = jint(root, keys[i], i != 4 && i != 6, 1, INT_MAX, &v[i], path);
    if (!rc) rc = jint(root, "bos_token_id", 0, 0, INT_MAX, &bos, path);
    if (!rc) rc = jint(root, "eos_token_id", 0, 0, INT_MAX, &eos, path);
    if (rc) goto done;
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = (int)v[0];
    c.hidden_dim = (int)v[1];
    c.n_layers = (int)v[2];
    c.n_heads = (int)v[3];
    c.n_kv_heads = (int)v[4];
    c.vocab_size = (int)v[5];
    c.seq_len = (int)v[6];
    c.bos_id = (int)bos;
    c.eos_id = (int)eos;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "rms_norm_eps");
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(root, "rope_theta");
    c.norm_eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-6f;
    c.rope_theta = cJSON_IsNumber(th) ? (float)th->valuedouble : 10000.0f;
    c.tied_embeddings = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings"));
    /* a sliced model: heads wider than the residual stream, the norms'
     * divisor and the shortcut matrices (docs/DECOMP.md, SliceGPT) */
    int64_t hd = 0, nd = 0;
    if ((rc = jint(root, "head_dim", 0, 1, 65536, &hd, path))) goto done;
    if (hd && hd * v[3] != v[0]) {
        if (hd * v[3] > 65536) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: head_dim %lld x %lld heads is too wide", path, (long long)hd,
                                (long long)v[3]);
            goto done;
        }
        c.attn_dim = (int)(hd * v[3]);
    }
    const cJSON *sl = cJSON_GetObjectItemCaseSensitive(root, "wmat_sliced");
    if (sl) {
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(sl, "shortcuts");
        if (!cJSON_IsObject(sl) || (rc = jint(sl, "norm_dim", 1, 1, 65536, &nd, path)) || !cJSON_IsBool(sc)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: \"wmat_sliced\" must be {\"norm_dim\": N, \"shortcuts\": true|false}",
                                path);
            goto done;
        }
        c.norm_dim = (int)nd;
        c.shortcuts = cJSON_IsTrue(sc);
    }
    const cJSON *gm = cJSON_GetObjectItemCaseSensitive(root, "wmat_gmm_mask");
    if (gm) {
        int64_t kk = 0;
        if (!cJSON_IsObject(gm) || jint(gm, "kernels", 1, 1, 16, &kk, path)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: \"wmat_gmm_mask\" must be {\"kernels\": K} with K in 1..16", path);
            goto done;
        }
        c.gmm_kernels = (int)kk;
    }
    rc = wmat__config_check(&c, path);
    if (!rc) *cfg = c;
done:
    cJSON_Delete(root);
    wmat__free(path);
    return rc;
}

/* ------------------------------------------------------------ saving */


int wmat_quant_model_save(wmat_model *m, const char *path, wmat_format fmt);

/* The array a plain weight of a kind safetensors has no dtype for (ggml
 * blocks) is stored under: "<name>.blocks", u8 (rows, bytes per row). */
#define BLOCKS_SUFFIX ".blocks"

static int save_native(wmat_model *m, const char *dir)
{
    int rc = WMAT_OK, n = 0;
    const int n_max = m->n_tensors * WMAT_WPART_MAX;
    wmat_st_entry *ent = wmat__calloc((size_t)(n_max ? n_max : 1), sizeof *ent);
    char(*names)[WMAT_NAME_MAX + 16] = wmat__calloc((size_t)(n_max ? n_max : 1), sizeof *names);
    char *cfg_text = wmat__malloc(4096), *qtext = NULL;
    char *st_path = wmat__path_join(dir, Q_WEIGHTS), *cfg_path = wmat__path_join(dir, Q_CONFIG), *q_path = wmat__path_join(dir, Q_QCONFIG);
    char *tok_path = wmat__path_join(dir, Q_TOKENIZER);
    cJSON *qroot = cJSON_CreateObject();
    wmat_afile st_af = {0}, cfg_af = {0}, q_af = {0};
    int st_open = 0, cfg_open = 0, q_open = 0;
    if (!ent || !names || !cfg_text || !st_path || !cfg_path || !q_path || !tok_path || !qroot) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    cJSON_AddStringToObject(qroot, "format", Q_FORMAT);
    cJSON_AddNumberToObject(qroot, "version", Q_VERSION);
    cJSON_AddStringToObject(qroot, "rope_layout", "interleaved");
    cJSON *tens = cJSON_AddObjectToObject(qroot, "tensors");
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        const wmat_wkind *k = wmat__wkind_of(t);
        const int st_dt = wmat__st_from_wmat_dtype(t->dtype);
        if (t->flags & WMAT_TF_HF_ROPE) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not materialized", dir, t->name);
            goto done;
        }
        if (t->dtype != WMAT_OBJ && (t->dtype == WMAT_F32 || t->dtype == WMAT_F16 || t->dtype == WMAT_BF16) && st_dt >= 0) {
            wmat_st_entry *e = &ent[n++]; /* a plain array safetensors holds as it is */
            e->name = t->name;
            e->dtype = (wmat_st_dtype)st_dt;
            e->ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e->shape[d] = t->shape[d];
            e->data = t->data;
            e->release = wmat__model_map_at(m, t->data);
            continue;
        }
        if (!k) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s (%s) cannot be stored", dir, t->name,
                                wmat_dtype_info(t->dtype) ? wmat_dtype_info(t->dtype)->name : "?");
            goto done;
        }
        /* described in quant_config.json by its kind, its arrays as parts */
        cJSON *sj = cJSON_CreateObject();
        cJSON *shape = sj ? cJSON_AddArrayToObject(sj, "shape") : NULL;
        if (!sj || !shape || !cJSON_AddStringToObject(sj, "kind", k->name)) {
            cJSON_Delete(sj);
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        cJSON_AddItemToObject(tens, t->name, sj);
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[0]));
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[1]));
        wmat_wpart parts[WMAT_WPART_MAX];
        int np = 0;
        if (k->save) {
            char what[WMAT_NAME_MAX + 64];
            snprintf(what, sizeof what, "%s: tensor %s", dir, t->name);
            if ((rc = k->save(t, sj, parts, &np, what))) goto done;
        } else {
            parts[np++] = (wmat_wpart){BLOCKS_SUFFIX, WMAT_U8, 2,
                                       {t->shape[0], (int64_t)wmat_dtype_bytes(t->dtype, (uint64_t)t->shape[1])}, t->data};
        }
        for (int p = 0; p < np; p++) {
            wmat_st_entry *e = &ent[n];
            snprintf(names[n], sizeof names[n], "%s%s", t->name, parts[p].suffix);
            e->name = names[n++];
            e->dtype = (wmat_st_dtype)wmat__st_from_wmat_dtype(parts[p].dtype);
            e->ndim = parts[p].ndim;
            e->shape[0] = parts[p].shape[0];
            e->shape[1] = parts[p].shape[1];
            e->data = parts[p].data;
            e->release = wmat__model_map_at(m, parts[p].data);
        }
    }
    qtext = cJSON_Print(qroot);
    char qcfg[400];
    snprintf(qcfg, sizeof qcfg, "\"quantization_config\": {\"quant_method\": \"wmat\", \"format\": \"" Q_FORMAT "\", \"version\": %d}",
             Q_VERSION);
    if (m->cfg.norm_dim || m->cfg.shortcuts) {
        /* a sliced model (SliceGPT): its attention width is head_dim above */
        const size_t k = strlen(qcfg);
        snprintf(qcfg + k, sizeof qcfg - k, ",\n  \"wmat_sliced\": {\"norm_dim\": %d, \"shortcuts\": %s}",
                 m->cfg.norm_dim ? m->cfg.norm_dim : m->cfg.dim, m->cfg.shortcuts ? "true" : "false");
    }
    if (m->cfg.gmm_kernels) {
        /* the Gaussian-mixture attention mask: its vectors are plain tensors above */
        const size_t k = strlen(qcfg);
        snprintf(qcfg + k, sizeof qcfg - k, ",\n  \"wmat_gmm_mask\": {\"kernels\": %d}", m->cfg.gmm_kernels);
    }
    int cfg_len = wmat__hf_config_json(&m->cfg, WMAT_F32, qcfg, cfg_text, 4096);
    if (!qtext || cfg_len < 0) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory building the JSON files", dir);
        goto done;
    }
    if ((rc = wmat__make_dirs(dir))) goto done;
    static const wmat_st_meta meta[2] = {{"format", "pt"}, {"wmat", Q_FORMAT}};
    if ((rc = wmat__afile_open(&st_af, st_path))) goto done;
    st_open = 1;
    if ((rc = wmat__st_write_afile(&st_af, ent, n, meta, 2))) goto done;
    if ((rc = wmat__afile_open(&cfg_af, cfg_path))) goto done;
    cfg_open = 1;
    if ((rc = wmat__afile_write(&cfg_af, cfg_text, (size_t)cfg_len))) goto done;
    if ((rc = wmat__afile_open(&q_af, q_path))) goto done;
    q_open = 1;
    if ((rc = wmat__afile_write(&q_af, qtext, strlen(qtext))) || (rc = wmat__afile_write(&q_af, "\n", 1))) goto done;
    if (m->tok && (rc = wmat_tokenizer_save_llama2c(m->tok, tok_path))) goto done;
    /* quant_config.json last: it is what marks the directory as quantized. */
    st_open = 0;
    if ((rc = wmat__afile_commit(&st_af))) goto done;
    cfg_open = 0;
    if ((rc = wmat__afile_commit(&cfg_af))) goto done;
    q_open = 0;
    rc = wmat__afile_commit(&q_af);
done:
    if (st_open) wmat__afile_abort(&st_af);
    if (cfg_open) wmat__afile_abort(&cfg_af);
    if (q_open) wmat__afile_abort(&q_af);
    cJSON_Delete(qroot);
    cJSON_free(qtext);
    wmat__free(ent);
    wmat__free(names);
    wmat__free(cfg_text);
    wmat__free(st_path);
    wmat__free(cfg_path);
    wmat__free(q_path);
    wmat__free(tok_path);
    return rc;
}

/* ------------------------------------------------------------ GGUF export */

typedef struct {
    const char *path;
} gguf_ctx;

/* Weights of any kind: plain ggml types (f16, bf16, q8_0, q4_0) as stored,
 * object kinds through their exact ggml type if they have one. */
static int gguf_encode(void *user, const wmat_tensor *t, wmat_dtype *dt, void *dst)
{
    const gguf_ctx *c = user;
    const wmat_wkind *k = wmat__wkind_of(t);
    if (!k || t->dtype == WMAT_F32) return 0;
    if (t->dtype != WMAT_OBJ) {
        *dt = t->dtype;
        if (dst) memcpy(dst, t->data, wmat_dtype_bytes(t->dtype, (uint64_t)wmat_tensor_nelem(t)));
        return 1;
    }
    const char *why = "it has no ggml type";
    wmat_dtype d = WMAT_F32;
    if (!k->gguf_type || !k->gguf_type(t, &d, &why)) {
        char desc[96];
        wmat_tensor_describe(t, desc, sizeof desc);
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: tensor %s (%s) cannot be exported to GGUF: %s", c->path, t->name,
                              desc, why);
    }
    *dt = d;
    if (dst) k->gguf_encode(t, dst);
    return 1;
}

int wmat_quant_model_save(wmat_model *m, const char *path, wmat_format fmt)
{
    if (!m->layer_idx) {
        int rc = wmat__model_bind(m);
        if (rc) return rc;
    }
    int rc = wmat_model_prepare_stored(m); /* weights of every kind are written as they are */
    if (rc) return rc;
    if (fmt == WMAT_FMT_QUANT) return save_native(m, path);
    if (fmt == WMAT_FMT_GPTQ) return wmat__gptq_save(m, path, NULL);
    if (fmt != WMAT_FMT_GGUF)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: a quantized model saves as 'quant' (native directory), 'gguf' or 'gptq'", path);
    /* general.file_type: the type most packed tensors become. */
    int n4 = 0, n8 = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        const wmat_qtensor *qt = wmat_tensor_qtensor(t);
        if (qt) n4 += qt->bits == 4, n8 += qt->bits == 8;
        else n4 += t->dtype == WMAT_Q4_0, n8 += t->dtype == WMAT_Q8_0;
    }
    gguf_ctx c = {path};
    wmat_dtype file_dt = n4 + n8 == 0 ? WMAT_F32 : n4 >= n8 ? WMAT_Q4_0 : WMAT_Q8_0;
    /* ggml K-quant tensors (quantize --ggml): the K-quant type most matrices
     * have (general.file_type then names that type's "_S" file type) */
    int nk[WMAT_DTYPE_COUNT] = {0}, best = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_dtype d = m->tensors[i].dtype;
        if (d == WMAT_Q2_K || d == WMAT_Q3_K || d == WMAT_Q4_K || d == WMAT_Q5_K || d == WMAT_Q6_K) nk[d]++;
    }
    for (int d = 0; d < WMAT_DTYPE_COUNT; d++)
        if (nk[d] > best) best = nk[d], file_dt = (wmat_dtype)d;
    return wmat__gguf_save_with(m, path, WMAT_F32, file_dt, gguf_encode, &c);
}

/* ------------------------------------------------------------ loading */

/* The parts of one described tensor, found in the safetensors file. */
typedef struct {
    const wmat_st_file *f;
    const char *name;
    uint8_t *used; /* per stored tensor: 1 once a kind took it */
} part_src;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    part_src *ps = user;
    char full[WMAT_NAME_MAX + 16];
    snprintf(full, sizeof full, "%s%s", ps->name, suffix);
    const wmat_st_tensor *t = wmat__st_find(ps->f, full);
    if (!t) return wmat_set_error(WMAT_ERR_FORMAT, "%s: missing tensor %s", ps->f->path, full);
    const int want = wmat__st_from_wmat_dtype(dtype);
    if ((int)t->dtype != want || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has dtype %s and the wrong shape (expected %s (%lld%s%lld))",
                              ps->f->path, full, wmat__st_dtype_name(t->dtype), want >= 0 ? wmat__st_dtype_name((wmat_st_dtype)want) : "?",
                              (long long)d0, ndim == 2 ? " x " : "", ndim == 2 ? (long long)d1 : 0LL);
    ps->used[t - ps->f->tensors] = 1;
    *data = t->data;
    return WMAT_OK;
}

/* One tensor of quant_config.json: its kind ("qpacked" when absent: files
 * of version 1 wrote packed tensors only) builds it from its parts. */
static int add_described(wmat_model *m, const wmat_st_file *f, const cJSON *item, const char *qpath, uint8_t *used)
{
    const char *name = item->string;
    char what[WMAT_NAME_MAX + 64];
    snprintf(what, sizeof what, "%s: tensor %.128s", qpath, name);
    if (!cJSON_IsObject(item) || strlen(name) >= WMAT_NAME_MAX)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: not an object or name too long", what);
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"shape\" must be [rows, cols]", what);
    const cJSON *s0 = cJSON_GetArrayItem(shape, 0), *s1 = cJSON_GetArrayItem(shape, 1);
    if (!cJSON_IsNumber(s0) || !cJSON_IsNumber(s1) || !(s0->valuedouble >= 1 && s0->valuedouble <= INT32_MAX) ||
        !(s1->valuedouble >= 1 && s1->valuedouble <= INT32_MAX))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad shape", what);
    const int64_t rows = (int64_t)s0->valuedouble, cols = (int64_t)s1->valuedouble;
    const cJSON *kj = cJSON_GetObjectItemCaseSensitive(item, "kind");
    if (kj && !cJSON_IsString(kj)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"kind\" must be a string", what);
    const wmat_wkind *k = wmat__wkind_find(kj ? kj->valuestring : "qpacked");
    if (!k) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: unknown weight kind \"%.32s\"", what, kj->valuestring);
    if (wmat_model_find(m, name)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: stored both described and plain", what);
    part_src ps = {f, name, used};
    const int64_t shp[2] = {rows, cols};
    if (k->dtype != WMAT_OBJ) { /* a plain kind stored as raw blocks */
        const size_t rb = wmat_dtype_bytes(k->dtype, (uint64_t)cols);
        const void *d;
        if (!rb) return wmat_set_error(WMAT_ERR_FORMAT, "%s: %lld columns do not fit %s blocks", what, (long long)cols, k->name);
        int rc = get_part(&ps, BLOCKS_SUFFIX, WMAT_U8, 2, rows, (int64_t)rb, &d);
        if (rc) return rc;
        if ((uintptr_t)d % 2) return wmat_set_error(WMAT_ERR_FORMAT, "%s: blocks are not 2-byte aligned", what);
        return wmat__model_add_tensor(m, name, k->dtype, 2, shp, (void *)d, 0);
    }
    if (!k->load) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: kind %s cannot be read from files", what, k->name);
    void *obj = NULL;
    int rc = k->load(item, rows, cols, get_part, &ps, what, &obj);
    if (rc) return rc;
    rc = wmat__model_add_tensor(m, name, WMAT_OBJ, 2, shp, obj, 0);
    if (rc) {
        k->free(obj);
        return rc;
    }
    wmat_tensor *t = &m->tensors[m->n_tensors - 1];
    t->flags = WMAT_TF_OWNED;
    t->nbytes = (size_t)k->nbytes(t);
    return WMAT_OK;
}

int wmat__quant_load(wmat_model **out, const char *dir, const wmat_load_params *p)
{
    *out = NULL;
    wmat_config cfg;
    int rc = read_config(dir, &cfg);
    if (rc) return rc;
    wmat_model *m = NULL;
    wmat_st_file *f = NULL;
    cJSON *q = NULL;
    uint8_t *used = NULL;
    char *qpath = wmat__path_join(dir, Q_QCONFIG), *st_path = wmat__path_join(dir, Q_WEIGHTS), *tok = wmat__path_join(dir, Q_TOKENIZER);
    if (!qpath || !st_path || !tok) {
        rc = WMAT_ERR_NOMEM;
        goto done;
    }
    if ((rc = wmat__model_new(&m, &cfg, WMAT_FMT_QUANT, dir))) goto done;
    if ((rc = read_json(qpath, &q))) goto done;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(q, "version");
    const cJSON *tens = cJSON_GetObjectItemCaseSensitive(q, "tensors");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, Q_FORMAT) || !cJSON_IsNumber(ver) || !cJSON_IsObject(tens)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not a %s description (format, version, tensors)", qpath, Q_FORMAT);
        goto done;
    }
    if (ver->valuedouble != Q_VERSION) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: version %g (wmat reads %d)", qpath, ver->valuedouble, Q_VERSION);
        goto done;
    }
    if ((rc = wmat__st_open(&f, st_path))) goto done;
    used = wmat__calloc((size_t)f->n_tensors + 1, 1);
    if (!used) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    for (const cJSON *it = tens->child; it && !rc; it = it->next) rc = add_described(m, f, it, qpath, used);
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        if (used[i]) continue;
        /* every array under a described tensor's name must be one of its parts */
        char base[WMAT_NAME_MAX + 16];
        snprintf(base, sizeof base, "%s", t->name);
        char *dot = strrchr(base, '.');
        if (dot) *dot = '\0';
        if (dot && cJSON_GetObjectItemCaseSensitive(tens, base)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s belongs to no tensor of %s (not a part of %s's kind)", st_path,
                                t->name, Q_QCONFIG, base);
            break;
        }
        int wd = wmat__st_to_wmat_dtype(t->dtype);
        if (wd != WMAT_F32 && wd != WMAT_F16 && wd != WMAT_BF16) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has dtype %s (F32, F16, BF16 or parts of a described tensor)",
                                st_path, t->name, wmat__st_dtype_name(t->dtype));
            break;
        }
        if (t->ndim < 1 || t->ndim > 2 || wmat_model_find(m, t->name)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s: bad rank or stored twice", st_path, t->name);
            break;
        }
        rc = wmat__model_add_tensor(m, t->name, (wmat_dtype)wd, t->ndim, t->shape, (void *)t->data, 0);
    }
    if (!rc) {
        wmat_map map;
        wmat__st_take_map(f, &map);
        if (map.addr) rc = wmat__model_add_map(m, &map);
    }
    if (!rc) rc = wmat__model_bind(m);
    if (!rc) {
        wmat_tokenizer *tk = NULL;
        if (p && p->tokenizer_path) rc = wmat_tokenizer_load_llama2c(&tk, p->tokenizer_path, cfg.vocab_size);
        else if (wmat__is_file(tok)) rc = wmat_tokenizer_load_llama2c(&tk, tok, cfg.vocab_size);
        if (!rc && tk) wmat_model_set_tokenizer(m, tk);
    }
done:
    wmat__free(used);
    wmat__st_close(f);
    cJSON_Delete(q);
    wmat__free(qpath);
    wmat__free(st_path);
    wmat__free(tok);
    if (rc) {
        wmat_model_free(m);
        return rc;
    }
    *out = m;
    return WMAT_OK;
}
