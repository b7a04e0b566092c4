/* Files of quantized models: the native directory (write, detect, load
 * memory-mapped) and GGUF export of the schemes that are ggml types.
 * Format: docs/_formats_quant.md. */
#include "qstore.h"

#include "../io/model_internal.h"
#include "../io/safetensors.h"

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

static const char *const g_suffix[4] = {".qcodes", ".qscales", ".qzeros", ".qperm"};



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
    rc = wmat__config_check(&c, path);
    if (!rc) *cfg = c;
done:
    cJSON_Delete(root);
    wmat__free(path);
    return rc;
}

/* ------------------------------------------------------------ saving */


/* The scheme of a packed tensor as a JSON object. */
static cJSON *scheme_json(const wmat_qtensor *qt)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)qt->rows));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)qt->cols));
    cJSON_AddNumberToObject(o, "bits", qt->bits);
    cJSON_AddBoolToObject(o, "sym", qt->sym);
    cJSON_AddStringToObject(o, "axis", qt->axis == WMAT_QAXIS_IN ? "in" : "out");
    cJSON_AddNumberToObject(o, "group", qt->group);
    cJSON_AddBoolToObject(o, "act_order", qt->perm != NULL);
    cJSON_AddNumberToObject(o, "chunk_bytes", (double)qt->chunk_bytes);
    return o;
}

int wmat_quant_model_save(wmat_model *m, const char *path, wmat_format fmt);

static int save_native(wmat_model *m, const char *dir)
{
    int rc = WMAT_OK, n = 0;
    const int n_max = m->n_tensors * 4;
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
        const wmat_qtensor *qt = wmat_tensor_qtensor(t);
        if (!qt) {
            if (t->dtype != WMAT_F32 || (t->flags & WMAT_TF_HF_ROPE)) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not materialized", dir, t->name);
                goto done;
            }
            wmat_st_entry *e = &ent[n++];
            e->name = t->name;
            e->dtype = WMAT_ST_F32;
            e->ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e->shape[d] = t->shape[d];
            e->data = t->data;
            continue;
        }
        cJSON *sj = scheme_json(qt);
        if (!sj) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        cJSON_AddItemToObject(tens, t->name, sj);
        const int64_t gdim0 = qt->axis == WMAT_QAXIS_IN ? qt->rows : qt->cols;
        const int64_t gdim1 = qt->n_groups / gdim0;
        for (int k = 0; k < 4; k++) {
            if ((k == 2 && !qt->zeros) || (k == 3 && !qt->perm)) continue;
            wmat_st_entry *e = &ent[n];
            snprintf(names[n], sizeof names[n], "%s%s", t->name, g_suffix[k]);
            e->name = names[n++];
            switch (k) {
            case 0:
                e->dtype = WMAT_ST_U8, e->ndim = 2, e->shape[0] = qt->rows, e->shape[1] = qt->row_bytes, e->data = qt->codes;
                break;
            case 1:
                e->dtype = WMAT_ST_F16, e->ndim = 2, e->shape[0] = gdim0, e->shape[1] = gdim1, e->data = qt->scales;
                break;
            case 2:
                e->dtype = WMAT_ST_U8, e->ndim = 2, e->shape[0] = gdim0, e->shape[1] = gdim1, e->data = qt->zeros;
                break;
            default: e->dtype = WMAT_ST_I32, e->ndim = 1, e->shape[0] = qt->cols, e->data = qt->perm; break;
            }
        }
    }
    qtext = cJSON_Print(qroot);
    char qcfg[160];
    snprintf(qcfg, sizeof qcfg, "\"quantization_config\": {\"quant_method\": \"wmat\", \"format\": \"" Q_FORMAT "\", \"version\": %d}",
             Q_VERSION);
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

/* Why a packed tensor is not exactly a ggml type ("" if it is one). */
static const char *gguf_misfit(const wmat_qtensor *qt, wmat_dtype *dt)
{
    if (qt->bits != 4 && qt->bits != 8) return "only 4-bit (Q4_0) and 8-bit (Q8_0) codes have an exact ggml type";
    if (!qt->sym) return "asymmetric (zero points): Q4_0/Q8_0 are symmetric";
    if (qt->axis != WMAT_QAXIS_IN) return "groups along outputs (per-IC): ggml blocks run along inputs";
    if (qt->group != 32) return "groups must be 32 inputs long (ggml's block)";
    if (qt->perm)
        for (int64_t k = 0; k < qt->cols; k++)
            if (qt->perm[k] != k) return "act-order permutation with groups: ggml has no column permutation";
    *dt = qt->bits == 4 ? WMAT_Q4_0 : WMAT_Q8_0;
    return "";
}

typedef struct {
    const char *path;
} gguf_ctx;

static int gguf_encode(void *user, const wmat_tensor *t, wmat_dtype *dt, void *dst)
{
    const gguf_ctx *c = user;
    const wmat_qtensor *qt = wmat_tensor_qtensor(t);
    if (!qt) return 0;
    wmat_dtype d = WMAT_F32;
    const char *why = gguf_misfit(qt, &d);
    if (*why)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: tensor %s (%d-bit, %s, groups of %d along %s%s) cannot be exported to GGUF: %s",
                              c->path, t->name, qt->bits, qt->sym ? "symmetric" : "asymmetric", qt->group,
                              qt->axis == WMAT_QAXIS_IN ? "inputs" : "outputs", qt->perm ? ", act-order" : "", why);
    *dt = d;
    if (!dst) return 1;
    unsigned char *o = dst;
    const int64_t nb = qt->cols / 32;
    for (int64_t r = 0; r < qt->rows; r++) {
        const uint8_t *src = qt->codes + r * qt->row_bytes;
        for (int64_t b = 0; b < nb; b++, src += qt->chunk_bytes) {
            memcpy(o, &qt->scales[r * nb + b], 2); /* fp16 scale bits as stored */
            if (d == WMAT_Q4_0) {
                memcpy(o + 2, src, 16); /* the 4-bit chunk is Q4_0's qs: c_j | c_(j+16) << 4 */
                o += 18;
            } else {
                for (int j = 0; j < 32; j++) o[2 + j] = (unsigned char)(int8_t)((int)src[j] - 128);
                o += 34;
            }
        }
    }
    return WMAT_OK;
}

int wmat_quant_model_save(wmat_model *m, const char *path, wmat_format fmt)
{
    if (!m->layer_idx) {
        int rc = wmat__model_bind(m);
        if (rc) return rc;
    }
    int rc = wmat_model_materialize(m); /* packed tensors are left as they are */
    if (rc) return rc;
    if (fmt == WMAT_FMT_QUANT) return save_native(m, path);
    if (fmt != WMAT_FMT_GGUF)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: a quantized model saves as 'quant' (native directory) or 'gguf'", path);
    /* general.file_type: the type most packed tensors become. */
    int n4 = 0, n8 = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_qtensor *qt = wmat_tensor_qtensor(&m->tensors[i]);
        if (qt) n4 += qt->bits == 4, n8 += qt->bits == 8;
    }
    gguf_ctx c = {path};
    const wmat_dtype file_dt = n4 + n8 == 0 ? WMAT_F32 : n4 >= n8 ? WMAT_Q4_0 : WMAT_Q8_0;
    return wmat__gguf_save_with(m, path, WMAT_F32, file_dt, gguf_encode, &c);
}

/* ------------------------------------------------------------ loading */

/* Find a part of a packed tensor and check its dtype and shape. */
static int part(const wmat_st_file *f, const char *name, int k, wmat_st_dtype dt, int ndim, int64_t d0, int64_t d1,
                const wmat_st_tensor **out)
{
    char full[WMAT_NAME_MAX + 16];
    snprintf(full, sizeof full, "%s%s", name, g_suffix[k]);
    const wmat_st_tensor *t = wmat__st_find(f, full);
    *out = t;
    if (!t) return wmat_set_error(WMAT_ERR_FORMAT, "%s: missing tensor %s", f->path, full);
    if (t->dtype != dt || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has dtype %s and the wrong shape (expected %s (%lld%s%lld))",
                              f->path, full, wmat__st_dtype_name(t->dtype), wmat__st_dtype_name(dt), (long long)d0,
                              ndim == 2 ? " x " : "", ndim == 2 ? (long long)d1 : 0LL);
    return WMAT_OK;
}

static int is_part_name(const char *name)
{
    size_t n = strlen(name);
    for (int k = 0; k < 4; k++) {
        size_t s = strlen(g_suffix[k]);
        if (n > s && !strcmp(name + n - s, g_suffix[k])) return 1;
    }
    return 0;
}

/* One packed tensor of quant_config.json -> a descriptor into the mapping. */
static int add_packed(wmat_model *m, const wmat_st_file *f, const cJSON *item, const char *qpath)
{
    const char *name = item->string;
    char what[WMAT_NAME_MAX + 64];
    snprintf(what, sizeof what, "%s: tensor %.128s", qpath, name);
    if (!cJSON_IsObject(item) || strlen(name) >= WMAT_NAME_MAX)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: not an object or name too long", what);
    int64_t bits = 0, group = 0, rows = 0, cols = 0;
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"shape\" must be [rows, cols]", what);
    const cJSON *s0 = cJSON_GetArrayItem(shape, 0), *s1 = cJSON_GetArrayItem(shape, 1);
    if (!cJSON_IsNumber(s0) || !cJSON_IsNumber(s1) || !(s0->valuedouble >= 1 && s0->valuedouble <= INT32_MAX) ||
        !(s1->valuedouble >= 1 && s1->valuedouble <= INT32_MAX))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad shape", what);
    rows = (int64_t)s0->valuedouble;
    cols = (int64_t)s1->valuedouble;
    int rc = jint(item, "bits", 1, 2, 8, &bits, what);
    if (!rc) rc = jint(item, "group", 1, 1, INT32_MAX, &group, what);
    if (rc) return rc;
    const cJSON *axis = cJSON_GetObjectItemCaseSensitive(item, "axis");
    const cJSON *sym = cJSON_GetObjectItemCaseSensitive(item, "sym");
    const cJSON *ao = cJSON_GetObjectItemCaseSensitive(item, "act_order");
    if (!cJSON_IsString(axis) || (strcmp(axis->valuestring, "in") && strcmp(axis->valuestring, "out")) || !cJSON_IsBool(sym))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"axis\" must be \"in\" or \"out\" and \"sym\" a boolean", what);
    wmat_qtensor s;
    memset(&s, 0, sizeof s);
    s.obj.kind = &wmat__wkind_qpacked;
    s.bits = (int)bits;
    s.sym = cJSON_IsTrue(sym);
    s.axis = strcmp(axis->valuestring, "in") ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
    s.group = (int)group;
    s.rows = rows;
    s.cols = cols;
    const int64_t len = s.axis == WMAT_QAXIS_IN ? cols : rows;
    if (cols % 32 || len % group || (s.axis == WMAT_QAXIS_IN && group % 32))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: group %lld along %s does not fit a (%lld x %lld) matrix", what,
                              (long long)group, axis->valuestring, (long long)rows, (long long)cols);
    s.n_groups = s.axis == WMAT_QAXIS_IN ? rows * (cols / group) : cols * (rows / group);
    s.chunk_bytes = wmat_qpack_chunk_bytes(s.bits);
    s.row_bytes = cols / 32 * s.chunk_bytes;
    const int64_t gd0 = s.axis == WMAT_QAXIS_IN ? rows : cols, gd1 = s.n_groups / gd0;
    const wmat_st_tensor *tc, *ts, *tz = NULL, *tp = NULL;
    rc = part(f, name, 0, WMAT_ST_U8, 2, rows, s.row_bytes, &tc);
    if (!rc) rc = part(f, name, 1, WMAT_ST_F16, 2, gd0, gd1, &ts);
    if (!rc && !s.sym) rc = part(f, name, 2, WMAT_ST_U8, 2, gd0, gd1, &tz);
    if (!rc && cJSON_IsTrue(ao)) rc = part(f, name, 3, WMAT_ST_I32, 1, cols, 0, &tp);
    if (rc) return rc;
    if (((uintptr_t)ts->data % 2) || (tp && (uintptr_t)tp->data % 4))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: scales or perm are not aligned to their element size", what);
    s.codes = tc->data;
    s.scales = ts->data;
    s.zeros = tz ? tz->data : NULL;
    s.perm = tp ? tp->data : NULL;
    if (s.perm) { /* a hostile perm would index outside x: check it is a permutation */
        uint8_t *seen = wmat__calloc((size_t)cols, 1);
        if (!seen) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        for (int64_t k = 0; k < cols && !rc; k++) {
            int32_t p = s.perm[k];
            if (p < 0 || p >= cols || seen[p]) rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: perm is not a permutation", what);
            else seen[p] = 1;
        }
        wmat__free(seen);
        if (rc) return rc;
    }
    wmat_qtensor *qt = wmat__malloc(sizeof *qt);
    if (!qt) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    *qt = s;
    if (wmat_model_find(m, name)) {
        wmat__free(qt);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: stored both packed and unpacked", what);
    }
    int64_t shp[2] = {rows, cols};
    rc = wmat__model_add_tensor(m, name, WMAT_QPACKED, 2, shp, qt, WMAT_TF_OWNED);
    if (!rc) m->tensors[m->n_tensors - 1].nbytes = (size_t)wmat_qtensor_nbytes(qt);
    return rc;
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
    for (const cJSON *it = tens->child; it && !rc; it = it->next) rc = add_packed(m, f, it, qpath);
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        if (is_part_name(t->name)) {
            /* every part must belong to a described tensor */
            char base[WMAT_NAME_MAX + 16];
            snprintf(base, sizeof base, "%s", t->name);
            *strrchr(base, '.') = '\0';
            if (!cJSON_GetObjectItemCaseSensitive(tens, base))
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s belongs to no tensor of %s", st_path, t->name, Q_QCONFIG);
            continue;
        }
        int wd = wmat__st_to_wmat_dtype(t->dtype);
        if (wd != WMAT_F32 && wd != WMAT_F16 && wd != WMAT_BF16) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has dtype %s (F32, F16, BF16 or packed parts)", st_path, t->name,
                                wmat__st_dtype_name(t->dtype));
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
    if (!rc && m->tok_embd_idx >= 0 && m->tensors[m->tok_embd_idx].dtype == WMAT_QPACKED)
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: the token embedding cannot be packed", dir);
    if (!rc) {
        wmat_tokenizer *tk = NULL;
        if (p && p->tokenizer_path) rc = wmat_tokenizer_load_llama2c(&tk, p->tokenizer_path, cfg.vocab_size);
        else if (wmat__is_file(tok)) rc = wmat_tokenizer_load_llama2c(&tk, tok, cfg.vocab_size);
        if (!rc && tk) wmat_model_set_tokenizer(m, tk);
    }
done:
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
