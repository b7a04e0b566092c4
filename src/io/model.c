/* The model object: a table of named tensors with their roles, the config,
 * the tokenizer and the file mappings the tensors point into. */
#include "model_internal.h"
#include "core/shapes.h"
#include "wop/wop.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const wmat__layer_role_names[WMAT_W_LAYER_COUNT] = {
    [WMAT_W_ATTN_NORM] = "input_layernorm",
    [WMAT_W_Q] = "self_attn.q_proj",
    [WMAT_W_K] = "self_attn.k_proj",
    [WMAT_W_V] = "self_attn.v_proj",
    [WMAT_W_O] = "self_attn.o_proj",
    [WMAT_W_FFN_NORM] = "post_attention_layernorm",
    [WMAT_W_GATE] = "mlp.gate_proj",
    [WMAT_W_DOWN] = "mlp.down_proj",
    [WMAT_W_UP] = "mlp.up_proj",
};

static const char *const g_linear_names[WMAT_LIN_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};

const char *wmat_linear_name(wmat_linear_kind k)
{
    return (unsigned)k < WMAT_LIN_COUNT ? g_linear_names[k] : "classifier";
}

void wmat__layer_tensor_name(char *buf, size_t n, int layer, wmat_layer_weight w)
{
    snprintf(buf, n, "model.layers.%d.%s.weight", layer, wmat__layer_role_names[w]);
}

void wmat__shortcut_name(char *buf, size_t n, int layer, int mlp)
{
    snprintf(buf, n, "model.layers.%d.%s.weight", layer, mlp ? "mlp_shortcut" : "attn_shortcut");
}

void wmat__gmm_mask_name(char *buf, size_t n, int layer)
{
    snprintf(buf, n, "model.layers.%d.self_attn.gmm_mask", layer);
}

wmat_tensor *wmat__model_shortcut(wmat_model *m, int layer, int mlp)
{
    if (!m->sc_idx || layer < 0 || layer >= m->cfg.n_layers) return NULL;
    return &m->tensors[m->sc_idx[2 * layer + (mlp ? 1 : 0)]];
}

int wmat__model_new(wmat_model **out, const wmat_config *cfg, wmat_format fmt, const char *path)
{
    *out = NULL;
    wmat_model *m = wmat__calloc(1, sizeof *m);
    if (!m) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path ? path : "model");
    if (cfg) m->cfg = *cfg;
    m->format = fmt;
    m->tok_embd_idx = m->final_norm_idx = m->classifier_idx = -1;
    if (path) {
        m->path = wmat__strdup(path);
        if (!m->path) {
            wmat__free(m);
            return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
        }
    }
    *out = m;
    return WMAT_OK;
}

void wmat_model_free(wmat_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) wmat__tensor_free_data(&m->tensors[i]);
    wmat__free(m->tensors);
    wmat__free(m->layer_idx);
    wmat__free(m->sc_idx);
    for (int i = 0; i < m->n_maps; i++) wmat__unmap(&m->maps[i]);
    wmat__free(m->maps);
    wmat_tokenizer_free(m->tok);
    wmat__free(m->path);
    wmat__free(m);
}

int wmat__model_add_tensor(wmat_model *m, const char *name, wmat_dtype dtype, int ndim,
                           const int64_t *shape, void *data, uint32_t flags)
{
    const char *src = m->path ? m->path : "model";
    if (ndim < 1 || ndim > WMAT_MAX_DIMS || strlen(name) >= WMAT_NAME_MAX) {
        if (flags & WMAT_TF_OWNED) wmat__free(data);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%.64s': bad rank %d or name too long", src, name, ndim);
    }
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !wmat__mul_ok(n, (uint64_t)shape[i], &n)) {
            if (flags & WMAT_TF_OWNED) wmat__free(data);
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s': shape overflows", src, name);
        }
    }
    if (m->n_tensors == m->cap_tensors) {
        int cap = m->cap_tensors ? m->cap_tensors * 2 : 64;
        wmat_tensor *t = wmat__realloc(m->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            if (flags & WMAT_TF_OWNED) wmat__free(data);
            return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for the tensor table", src);
        }
        m->tensors = t;
        m->cap_tensors = cap;
    }
    wmat_tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = wmat_dtype_bytes(dtype, n);
    t->flags = flags;
    return WMAT_OK;
}

static const wmat_map *map_of(const wmat_model *m, const wmat_tensor *t)
{
    if (!t->data || (t->flags & WMAT_TF_OWNED) || t->dtype == WMAT_OBJ) return NULL;
    const uintptr_t a = (uintptr_t)t->data;
    for (int i = 0; i < m->n_maps; i++) {
        const uintptr_t b = (uintptr_t)m->maps[i].addr;
        if (m->maps[i].addr && a >= b && a < b + m->maps[i].len) return &m->maps[i];
    }
    return NULL;
}

void wmat__model_release(const wmat_model *m, const wmat_tensor *t)
{
    if (!m) return;
    if (!t) {
        for (int i = 0; i < m->n_maps; i++) wmat__map_release(&m->maps[i], m->maps[i].addr, m->maps[i].len);
        return;
    }
    if (t->dtype == WMAT_OBJ) {
        /* an object kind whose arrays lie in a mapping (a native directory,
         * or a spilled block: wmat__model_spill): each part's pages */
        const wmat_wkind *k = wmat__wkind_of(t);
        if (!k || !k->save || !m->n_maps) return;
        cJSON *desc = cJSON_CreateObject();
        wmat_wpart parts[WMAT_WPART_MAX];
        int np = 0;
        if (desc && k->save(t, desc, parts, &np, "release") == WMAT_OK)
            for (int i = 0; i < np; i++) {
                const wmat_map *pm = wmat__model_map_at(m, parts[i].data);
                const uint64_t n = (uint64_t)parts[i].shape[0] * (uint64_t)(parts[i].ndim == 2 ? parts[i].shape[1] : 1);
                if (pm) wmat__map_release(pm, parts[i].data, (size_t)wmat_dtype_bytes(parts[i].dtype, n));
            }
        cJSON_Delete(desc);
        return;
    }
    const wmat_map *mp = map_of(m, t);
    if (mp) wmat__map_release(mp, t->data, t->nbytes);
}

const wmat_map *wmat__model_map_at(const wmat_model *m, const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    for (int i = 0; p && i < m->n_maps; i++) {
        const uintptr_t b = (uintptr_t)m->maps[i].addr;
        if (m->maps[i].addr && a >= b && a < b + m->maps[i].len) return &m->maps[i];
    }
    return NULL;
}

void wmat__model_release_layer(const wmat_model *m, int layer)
{
    if (!m || !m->layer_idx || layer < 0 || layer >= m->cfg.n_layers) return;
    for (int k = 0; k < WMAT_W_LAYER_COUNT; k++) {
        const int i = m->layer_idx[(size_t)layer * WMAT_W_LAYER_COUNT + (size_t)k];
        if (i >= 0) wmat__model_release(m, &m->tensors[i]);
    }
    if (m->sc_idx)
        for (int k = 0; k < 2; k++) {
            const int i = m->sc_idx[2 * layer + k];
            if (i >= 0) wmat__model_release(m, &m->tensors[i]);
        }
}

uint64_t wmat__model_mapped_bytes(const wmat_model *m)
{
    uint64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (map_of(m, &m->tensors[i])) n += m->tensors[i].nbytes;
    return n;
}

int wmat__model_low_mem(const wmat_model *m, int low_mem)
{
    return low_mem > 0 || (low_mem == 0 && wmat__model_mapped_bytes(m) >= WMAT_LOW_MEM_AUTO_BYTES);
}

int wmat__model_add_map(wmat_model *m, wmat_map *map)
{
    wmat_map *maps = wmat__realloc(m->maps, (size_t)(m->n_maps + 1) * sizeof *maps);
    if (!maps) {
        wmat__unmap(map);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", m->path ? m->path : "model");
    }
    m->maps = maps;
    m->maps[m->n_maps++] = *map;
    map->addr = NULL;
    map->len = 0;
    return WMAT_OK;
}

int wmat__config_check(wmat_config *c, const char *what)
{
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->vocab_size <= 0 ||
        c->seq_len <= 0)
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: bad config (dim %d, hidden %d, layers %d, heads %d, vocab %d, seq_len %d): all must be positive",
                              what, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->vocab_size, c->seq_len);
    if (c->n_kv_heads <= 0) c->n_kv_heads = c->n_heads;
    /* Bounds that no real LLaMA exceeds; they keep products in int range. */
    if (c->dim > 65536 || c->hidden_dim > 262144 || c->n_layers > 1024 || c->n_heads > 1024 ||
        c->vocab_size > 4194304 || c->seq_len > 1048576)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: config values too large (dim %d, hidden %d, layers %d, heads %d, vocab %d, seq_len %d)",
                              what, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->vocab_size, c->seq_len);
    /* a sliced model (SliceGPT) keeps its attention width and the norms'
     * divisor of the width it was sliced from */
    if (c->attn_dim < 0 || c->attn_dim > 65536 || c->norm_dim < 0 || c->norm_dim > 65536 || c->shortcuts < 0 ||
        c->shortcuts > 1)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad sliced-model config (attention width %d, norm divisor %d, shortcuts %d)",
                              what, c->attn_dim, c->norm_dim, c->shortcuts);
    if (c->gmm_kernels < 0 || c->gmm_kernels > 16)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: a Gaussian-mixture attention mask has 1..16 kernels per head (got %d)",
                              what, c->gmm_kernels);
    if (c->attn_dim == c->dim) c->attn_dim = 0;
    if (c->norm_dim == c->dim) c->norm_dim = 0;
    const int attn = c->attn_dim ? c->attn_dim : c->dim;
    if (attn % c->n_heads)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s %d is not a multiple of n_heads %d", what,
                              c->attn_dim ? "attention width" : "dim", attn, c->n_heads);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: n_heads %d is not a multiple of n_kv_heads %d", what, c->n_heads,
                              c->n_kv_heads);
    c->head_dim = attn / c->n_heads;
    if (c->head_dim % 2)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: head dimension %d is odd (RoPE needs pairs)", what, c->head_dim);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) c->rope_theta = 10000.0f;
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps)) c->norm_eps = 1e-5f;
    if (c->bos_id < 0 || c->bos_id >= c->vocab_size) c->bos_id = 1 < c->vocab_size ? 1 : 0;
    if (c->eos_id < 0 || c->eos_id >= c->vocab_size) c->eos_id = 2 < c->vocab_size ? 2 : 0;
    return WMAT_OK;
}

static int find_index(const wmat_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

static int expect(wmat_model *m, const char *name, int64_t d0, int64_t d1, int *idx, int required)
{
    const char *src = m->path ? m->path : "model";
    int i = find_index(m, name);
    *idx = i;
    if (i < 0) return required ? wmat_set_error(WMAT_ERR_FORMAT, "%s: missing tensor %s", src, name) : WMAT_OK;
    const wmat_tensor *t = &m->tensors[i];
    int ok = d1 ? (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1) : (t->ndim == 1 && t->shape[0] == d0);
    if (!ok) {
        char got[96] = "";
        size_t k = 0;
        for (int j = 0; j < t->ndim && k < sizeof got - 24; j++)
            k += (size_t)snprintf(got + k, sizeof got - k, "%s%lld", j ? " x " : "", (long long)t->shape[j]);
        if (d1)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has shape (%s), the config implies (%lld x %lld)", src,
                                  name, got, (long long)d0, (long long)d1);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has shape (%s), the config implies (%lld)", src, name, got,
                              (long long)d0);
    }
    if (t->data == NULL && t->nbytes > 0)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s has no data", src, name);
    return WMAT_OK;
}

int wmat__model_bind(wmat_model *m)
{
    const char *src = m->path ? m->path : "model";
    int rc = wmat__config_check(&m->cfg, src);
    if (rc) return rc;
    const wmat_config *c = &m->cfg;
    wmat__free(m->layer_idx);
    m->layer_idx = wmat__malloc((size_t)c->n_layers * WMAT_W_LAYER_COUNT * sizeof(int));
    if (!m->layer_idx) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", src);
    rc = expect(m, WMAT_NAME_TOK_EMBD, c->vocab_size, c->dim, &m->tok_embd_idx, 1);
    if (!rc) rc = expect(m, WMAT_NAME_FINAL_NORM, c->dim, 0, &m->final_norm_idx, 1);
    if (!rc) rc = expect(m, WMAT_NAME_CLASSIFIER, c->vocab_size, c->dim, &m->classifier_idx, !c->tied_embeddings);
    if (!rc && c->tied_embeddings) m->classifier_idx = -1;
    for (int l = 0; l < c->n_layers && !rc; l++) {
        for (int w = 0; w < WMAT_W_LAYER_COUNT && !rc; w++) {
            int64_t d0, d1;
            wmat__role_shape(c, (wmat_layer_weight)w, &d0, &d1);
            char name[WMAT_NAME_MAX];
            wmat__layer_tensor_name(name, sizeof name, l, (wmat_layer_weight)w);
            rc = expect(m, name, d0, d1, &m->layer_idx[l * WMAT_W_LAYER_COUNT + w], 1);
        }
    }
    for (int l = 0; l < c->n_layers && !rc && c->gmm_kernels; l++) {
        char name[WMAT_NAME_MAX];
        int idx;
        wmat__gmm_mask_name(name, sizeof name, l);
        rc = expect(m, name, (int64_t)c->n_heads * c->gmm_kernels * 2, 0, &idx, 1);
        if (!rc && m->tensors[idx].dtype != WMAT_F32)
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s must be f32", src, name);
    }
    wmat__free(m->sc_idx);
    m->sc_idx = NULL;
    if (!rc && c->shortcuts) {
        m->sc_idx = wmat__malloc((size_t)c->n_layers * 2 * sizeof(int));
        if (!m->sc_idx) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", src);
        for (int l = 0; l < c->n_layers && !rc; l++)
            for (int s = 0; s < 2 && !rc; s++) {
                char name[WMAT_NAME_MAX];
                wmat__shortcut_name(name, sizeof name, l, s);
                rc = expect(m, name, c->dim, c->dim, &m->sc_idx[2 * l + s], 1);
            }
    }
    return rc;
}

/* HF stores each head's rows as [even pairs' first halves..., second
 * halves...]; llama2.c/GGUF interleave them: meta row 2i+j = HF row j*hd/2+i.
 * Rows are moved whole, so this holds for rows of any stored type. */
void wmat__rope_unpermute_rows(void *dst, const void *src, int n_heads, int head_dim, size_t row_bytes)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy((char *)dst + ((size_t)h * head_dim + 2 * i + j) * row_bytes,
                       (const char *)src + ((size_t)h * head_dim + j * half + i) * row_bytes, row_bytes);
}

void wmat__rope_unpermute_hf(float *dst, const float *src, int n_heads, int head_dim, int64_t cols)
{
    wmat__rope_unpermute_rows(dst, src, n_heads, head_dim, (size_t)cols * sizeof(float));
}

void wmat__rope_permute_hf(float *dst, const float *src, int n_heads, int head_dim, int64_t cols)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + ((int64_t)h * head_dim + j * half + i) * cols,
                       src + ((int64_t)h * head_dim + 2 * i + j) * cols, (size_t)cols * sizeof(float));
}

/* ------------------------------------------------------------ public API */

wmat_load_params wmat_load_default_params(void)
{
    wmat_load_params p = {.tokenizer_path = NULL, .materialize_f32 = 1, .keep_stored = 0, .check_finite = 0};
    return p;
}

wmat_save_params wmat_save_default_params(void)
{
    wmat_save_params p = {WMAT_FMT_GGUF, WMAT_F32, NULL};
    return p;
}

/* A 2-D weight that the runtime can use as stored: a plain kind (f16,
 * bf16, q8_0, q4_0) whose elements lie at their natural alignment. */
static int runs_as_stored(const wmat_tensor *t)
{
    if (t->ndim != 2 || t->dtype == WMAT_OBJ || !wmat__wkind_of(t)) return 0;
    const size_t align = t->dtype == WMAT_F32 ? 4 : 2; /* ggml blocks start with an fp16 scale */
    return ((uintptr_t)t->data % align) == 0;
}

/* Put the rows of a stored weight in canonical (interleaved rotary) order,
 * in an owned copy of its stored type. */
static int unpermute_stored(wmat_model *m, wmat_tensor *t)
{
    const size_t row_bytes = wmat_dtype_bytes(t->dtype, (uint64_t)t->shape[1]);
    void *buf = wmat__aligned_alloc(t->nbytes);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory reordering %s", m->path ? m->path : "model", t->name);
    wmat__rope_unpermute_rows(buf, t->data, (int)(t->shape[0] / m->cfg.head_dim), m->cfg.head_dim, row_bytes);
    wmat__model_release(m, t);
    if (t->flags & WMAT_TF_OWNED) wmat__free(t->data);
    t->data = buf;
    t->flags = (t->flags | WMAT_TF_OWNED) & ~WMAT_TF_HF_ROPE;
    return WMAT_OK;
}

/* keep_stored 0: every plain tensor f32; 1: weights the runtime can use
 * as stored stay so; 2 (saving): only tensors in HF's rotary row order are
 * rewritten, the rest stay as they are and the writers convert each
 * (wmat__tensor_f32_for_save) when they write it. */
static int materialize(wmat_model *m, int keep_stored)
{
    const char *src = m->path ? m->path : "model";
    for (int i = 0; i < m->n_tensors; i++) {
        wmat_tensor *t = &m->tensors[i];
        if (t->dtype == WMAT_OBJ) continue; /* object kinds (packed, low-rank) run as they are */
        if (keep_stored == 2 && !(t->flags & WMAT_TF_HF_ROPE)) continue;
        if (keep_stored && runs_as_stored(t)) {
            int rc = (t->flags & WMAT_TF_HF_ROPE) ? unpermute_stored(m, t) : WMAT_OK;
            if (rc) return rc;
            continue;
        }
        int aligned = ((uintptr_t)t->data % sizeof(float)) == 0;
        if (t->dtype == WMAT_F32 && aligned && !(t->flags & WMAT_TF_HF_ROPE)) continue;
        int64_t n = wmat_tensor_nelem(t);
        float *buf = wmat__aligned_alloc((size_t)n * sizeof(float));
        if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory converting %s to f32", src, t->name);
        int rc = wmat_to_f32(buf, t->data, t->dtype, (uint64_t)n);
        if (rc) {
            wmat__free(buf);
            return wmat_set_error(rc, "%s: tensor %s: %s", src, t->name, wmat_last_error());
        }
        if (t->flags & WMAT_TF_HF_ROPE) {
            float *perm = wmat__aligned_alloc((size_t)n * sizeof(float));
            if (!perm) {
                wmat__free(buf);
                return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", src);
            }
            int heads = (int)(t->shape[0] / m->cfg.head_dim);
            wmat__rope_unpermute_hf(perm, buf, heads, m->cfg.head_dim, t->shape[1]);
            wmat__free(buf);
            buf = perm;
        }
        wmat__model_release(m, t); /* the mapped source is not read again */
        if (t->flags & WMAT_TF_OWNED) wmat__free(t->data);
        t->data = buf;
        t->dtype = WMAT_F32;
        t->nbytes = (size_t)n * sizeof(float);
        t->flags = (t->flags | WMAT_TF_OWNED) & ~WMAT_TF_HF_ROPE;
    }
    return WMAT_OK;
}

int wmat_model_materialize(wmat_model *m) { return materialize(m, 0); }

int wmat_model_dequantize(wmat_model *m)
{
    int rc = materialize(m, 0);
    for (int i = 0; i < m->n_tensors && !rc; i++) {
        wmat_tensor *t = &m->tensors[i];
        const wmat_wkind *k = t->dtype == WMAT_OBJ ? wmat__wkind_of(t) : NULL;
        if (!k) continue;
        const size_t n = (size_t)t->shape[0] * (size_t)t->shape[1];
        float *buf = wmat__aligned_alloc(n * sizeof(float));
        if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory expanding %s (%s) to f32", m->path ? m->path : "model",
                                        t->name, k->name);
        k->dequant_rows(t, 0, t->shape[0], buf);
        wmat__tensor_free_data(t);
        t->data = buf;
        t->dtype = WMAT_F32;
        t->nbytes = n * sizeof(float);
        t->flags = WMAT_TF_OWNED;
    }
    return rc;
}
int wmat_model_prepare_stored(wmat_model *m) { return materialize(m, 1); }

/* Every weight checked as the runtime will read it: fp32 arrays directly,
 * other kinds through their dequantization, a row block at a time. */
/* Plain 16-bit and ggml block weights are finite iff their halves are: a
 * half is Inf or NaN iff its exponent bits are all ones (f16 0x7C00, bf16
 * 0x7F80), and block codes are integers (|code| <= 127 times a finite
 * half stays finite in fp32). Checked on the bits: a 1.1B-parameter f16
 * model takes a fraction of a second instead of converting every value.
 * The index of the first bad element (a block's first for a bad scale),
 * -1 if none, -2 for a type this does not cover. */
static int64_t first_nonfinite_stored(const wmat_tensor *t)
{
    const unsigned char *p = t->data;
    const uint64_t n = wmat_tensor_nelem(t);
    uint16_t h;
    switch (t->dtype) {
    case WMAT_F16:
    case WMAT_BF16: {
        const uint16_t mask = t->dtype == WMAT_F16 ? 0x7C00 : 0x7F80;
        for (uint64_t i = 0; i < n; i++) {
            memcpy(&h, p + 2 * i, 2);
            if ((h & mask) == mask) return (int64_t)i;
        }
        return -1;
    }
    case WMAT_Q8_0:
    case WMAT_Q4_0: {
        const size_t bb = t->dtype == WMAT_Q8_0 ? 34 : 18;
        for (uint64_t b = 0; b < n / 32; b++) {
            memcpy(&h, p + bb * b, 2);
            if ((h & 0x7C00) == 0x7C00) return (int64_t)(32 * b);
        }
        return -1;
    }
    default: return -2;
    }
}

static int check_finite(wmat_model *m)
{
    const char *src = m->path ? m->path : "model";
    float *buf = NULL;
    size_t cap = 0;
    int rc = WMAT_OK;
    for (int i = 0; i < m->n_tensors && !rc; i++) {
        wmat_tensor *t = &m->tensors[i];
        size_t bad;
        if (t->dtype == WMAT_F32) {
            if (!wmat__all_finite(t->data, (size_t)wmat_tensor_nelem(t), &bad))
                rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: tensor %s has a non-finite value (%g) at index %zu", src, t->name,
                                    ((const float *)t->data)[bad], bad);
            wmat__model_release(m, t); /* read once here: not resident until used */
            continue;
        }
        const wmat_wkind *k = wmat__wkind_of(t);
        if (!k) continue;
        const int64_t cols = t->shape[1];
        const int64_t first = first_nonfinite_stored(t);
        if (first == -1) {
            wmat__model_release(m, t);
            continue;
        }
        if (first >= 0) {
            rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: tensor %s (%s) has a non-finite value at row %lld, column %lld", src,
                                t->name, wmat_dtype_info(t->dtype)->name, (long long)(first / cols), (long long)(first % cols));
            break;
        }
        int64_t step = (int64_t)(((size_t)1 << 20) / (size_t)cols);
        if (step < 1) step = 1;
        const size_t need = (size_t)step * (size_t)cols * sizeof(float);
        if (need > cap) {
            wmat__free(buf);
            buf = wmat__malloc(need);
            cap = buf ? need : 0;
            if (!buf) rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory checking %s", src, t->name);
        }
        for (int64_t r0 = 0; r0 < t->shape[0] && !rc; r0 += step) {
            const int64_t nr = t->shape[0] - r0 < step ? t->shape[0] - r0 : step;
            k->dequant_rows(t, r0, nr, buf);
            if (!wmat__all_finite(buf, (size_t)(nr * cols), &bad))
                rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: tensor %s has a non-finite value (%g) at row %lld, column %lld",
                                    src, t->name, buf[bad], (long long)(r0 + (int64_t)bad / cols), (long long)((int64_t)bad % cols));
        }
        wmat__model_release(m, t);
    }
    wmat__free(buf);
    return rc;
}

int wmat_model_load(wmat_model **out, const char *path, const wmat_load_params *p)
{
    *out = NULL;
    wmat_load_params def = wmat_load_default_params();
    if (!p) p = &def;
    wmat_format f = wmat_detect_format(path);
    int rc;
    wmat_model *m = NULL;
    if (f == WMAT_FMT_UNKNOWN) return wmat_set_error(WMAT_ERR_IO, "%s: no such file or directory", path);
    rc = wmat__format_load(f, &m, path, p);
    if (rc) {
        wmat_model_free(m);
        return rc;
    }
    if (p->materialize_f32) rc = materialize(m, p->keep_stored);
    if (!rc && p->check_finite) rc = check_finite(m);
    if (rc) {
        wmat_model_free(m);
        return rc;
    }
    *out = m;
    return WMAT_OK;
}

/* A tensor a writer reads through a buffer: produced by `fill`, stored in
 * another plain type (f16, bf16, ggml blocks), or f32 off its alignment. */
static int needs_save_buffer(const wmat_model *m, const wmat_tensor *t)
{
    if (!t->data) return m->fill != NULL;
    if (t->dtype == WMAT_OBJ) return 0;
    return t->dtype != WMAT_F32 || ((uintptr_t)t->data % sizeof(float)) != 0;
}

int wmat__tensor_f32_for_save(const wmat_model *m, const wmat_tensor *t, float *buf, const float **out)
{
    *out = t->data;
    if (t->data && needs_save_buffer(m, t)) {
        /* converted here, one tensor at a time: no f32 copy of the model */
        if (!buf) return wmat_set_error(WMAT_ERR_INTERNAL, "%s: no buffer for tensor %s", m->path ? m->path : "model", t->name);
        int rc = wmat_to_f32(buf, t->data, t->dtype, (uint64_t)wmat_tensor_nelem(t));
        if (rc) return wmat_set_error(rc, "%s: tensor %s: %s", m->path ? m->path : "model", t->name, wmat_last_error());
        *out = buf;
        return WMAT_OK;
    }
    if (t->data) return WMAT_OK;
    if (!m->fill)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s has no data", m->path ? m->path : "model", t->name);
    if (!buf) return wmat_set_error(WMAT_ERR_INTERNAL, "%s: no buffer for tensor %s", m->path ? m->path : "model", t->name);
    int rc = m->fill(m->fill_user, t, buf);
    *out = buf;
    return rc;
}

int64_t wmat__model_max_fill(const wmat_model *m)
{
    int64_t mx = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (needs_save_buffer(m, &m->tensors[i]) && wmat_tensor_nelem(&m->tensors[i]) > mx) mx = wmat_tensor_nelem(&m->tensors[i]);
    return mx;
}

int wmat_model_save(wmat_model *m, const char *path, const wmat_save_params *p)
{
    wmat_save_params def = wmat_save_default_params();
    if (!p) p = &def;
    const wmat_config *c = &m->cfg;
    /* heads wider than the residual stream: HF (head_dim) and GGUF
     * (key_length) say so, llama2.c cannot; shortcut matrices and the
     * norms' divisor only the native directory holds */
    if (((c->shortcuts || c->norm_dim) && p->format != WMAT_FMT_QUANT) || (c->attn_dim && p->format == WMAT_FMT_LLAMA2C))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: a sliced model (residual width %d, attention width %d, norm divisor %d%s) is stored "
                              "%s: %s cannot express it",
                              path, c->dim, c->attn_dim ? c->attn_dim : c->dim, c->norm_dim ? c->norm_dim : c->dim,
                              c->shortcuts ? ", residual shortcut matrices" : "",
                              c->shortcuts || c->norm_dim ? "only in the native directory ('quant')" : "as HF, GGUF or 'quant'",
                              wmat_format_name(p->format));
    if (c->gmm_kernels && p->format != WMAT_FMT_QUANT)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: a model with a Gaussian-mixture attention mask (%d kernels per head) is stored only in "
                              "the native directory ('quant'): %s cannot express it",
                              path, c->gmm_kernels, wmat_format_name(p->format));
    /* a source in another type (f16, bf16, ggml blocks) is converted by the
     * writer one tensor at a time, never into an f32 copy of the model */
    int rc = materialize(m, 2);
    if (rc) return rc;
    /* Models holding packed tensors (or asking for the native quantized
     * directory) go through the quantized-storage saver. */
    int packed = p->format == WMAT_FMT_QUANT;
    for (int i = 0; i < m->n_tensors && !packed; i++) packed = m->tensors[i].dtype == WMAT_QPACKED;
    if (packed) {
        if (p->format == WMAT_FMT_QUANT || p->format == WMAT_FMT_GGUF) return wmat_quant_model_save(m, path, p->format);
        if (p->format == WMAT_FMT_GPTQ) return wmat__gptq_save(m, path, p);
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: the model holds packed quantized tensors; save it as the native directory, GGUF or GPTQ "
                              "(or wmat_model_dequantize it first, as `wmat convert` does)",
                              path);
    }
    return wmat__format_save(m, path, p);
}

int wmat_model_create(wmat_model **out, const wmat_config *cfg)
{
    *out = NULL;
    wmat_config c = *cfg;
    int rc = wmat__config_check(&c, "config");
    if (rc) return rc;
    wmat_model *m;
    rc = wmat__model_new(&m, &c, WMAT_FMT_UNKNOWN, NULL);
    if (rc) return rc;
    struct { const char *name; int64_t d0, d1; } glob[3] = {
        {WMAT_NAME_TOK_EMBD, c.vocab_size, c.dim}, {WMAT_NAME_FINAL_NORM, c.dim, 0}, {WMAT_NAME_CLASSIFIER, c.vocab_size, c.dim}};
    for (int g = 0; g < 3 && !rc; g++) {
        if (g == 2 && c.tied_embeddings) break;
        int64_t shape[2] = {glob[g].d0, glob[g].d1};
        int nd = glob[g].d1 ? 2 : 1;
        size_t n = (size_t)(glob[g].d0 * (glob[g].d1 ? glob[g].d1 : 1));
        void *d = wmat__aligned_alloc(n * sizeof(float));
        rc = d ? wmat__model_add_tensor(m, glob[g].name, WMAT_F32, nd, shape, d, WMAT_TF_OWNED)
               : wmat_set_error(WMAT_ERR_NOMEM, "out of memory creating a model");
    }
    for (int l = 0; l < c.n_layers && !rc; l++) {
        for (int w = 0; w < WMAT_W_LAYER_COUNT && !rc; w++) {
            int64_t d0, d1;
            wmat__role_shape(&c, (wmat_layer_weight)w, &d0, &d1);
            int64_t shape[2] = {d0, d1};
            char name[WMAT_NAME_MAX];
            wmat__layer_tensor_name(name, sizeof name, l, (wmat_layer_weight)w);
            size_t n = (size_t)(d0 * (d1 ? d1 : 1));
            void *d = wmat__aligned_alloc(n * sizeof(float));
            rc = d ? wmat__model_add_tensor(m, name, WMAT_F32, d1 ? 2 : 1, shape, d, WMAT_TF_OWNED)
                   : wmat_set_error(WMAT_ERR_NOMEM, "out of memory creating a model");
        }
        if (c.gmm_kernels && !rc) {
            int64_t shape[2] = {(int64_t)c.n_heads * c.gmm_kernels * 2, 0};
            char name[WMAT_NAME_MAX];
            wmat__gmm_mask_name(name, sizeof name, l);
            void *d = wmat__aligned_alloc((size_t)shape[0] * sizeof(float));
            if (d) memset(d, 0, (size_t)shape[0] * sizeof(float));
            rc = d ? wmat__model_add_tensor(m, name, WMAT_F32, 1, shape, d, WMAT_TF_OWNED)
                   : wmat_set_error(WMAT_ERR_NOMEM, "out of memory creating a model");
        }
        for (int s = 0; s < 2 && c.shortcuts && !rc; s++) {
            int64_t shape[2] = {c.dim, c.dim};
            char name[WMAT_NAME_MAX];
            wmat__shortcut_name(name, sizeof name, l, s);
            void *d = wmat__aligned_alloc((size_t)c.dim * (size_t)c.dim * sizeof(float));
            rc = d ? wmat__model_add_tensor(m, name, WMAT_F32, 2, shape, d, WMAT_TF_OWNED)
                   : wmat_set_error(WMAT_ERR_NOMEM, "out of memory creating a model");
        }
    }
    if (!rc) rc = wmat__model_bind(m);
    if (rc) {
        wmat_model_free(m);
        return rc;
    }
    *out = m;
    return WMAT_OK;
}

const wmat_config *wmat_model_config(const wmat_model *m) { return &m->cfg; }
wmat_format wmat_model_format(const wmat_model *m) { return m->format; }
const char *wmat_model_path(const wmat_model *m) { return m->path ? m->path : ""; }
int wmat_model_n_tensors(const wmat_model *m) { return m->n_tensors; }
wmat_tensor *wmat_model_tensor(wmat_model *m, int i) { return i >= 0 && i < m->n_tensors ? &m->tensors[i] : NULL; }
wmat_tensor *wmat_model_find(wmat_model *m, const char *name)
{
    int i = find_index(m, name);
    return i < 0 ? NULL : &m->tensors[i];
}
wmat_tensor *wmat_model_layer_tensor(wmat_model *m, int layer, wmat_layer_weight w)
{
    if (!m->layer_idx || layer < 0 || layer >= m->cfg.n_layers || (unsigned)w >= WMAT_W_LAYER_COUNT) return NULL;
    return &m->tensors[m->layer_idx[layer * WMAT_W_LAYER_COUNT + w]];
}
wmat_tensor *wmat_model_tok_embeddings(wmat_model *m) { return m->tok_embd_idx < 0 ? NULL : &m->tensors[m->tok_embd_idx]; }
wmat_tensor *wmat_model_final_norm(wmat_model *m) { return m->final_norm_idx < 0 ? NULL : &m->tensors[m->final_norm_idx]; }
wmat_tensor *wmat_model_classifier(wmat_model *m)
{
    return m->classifier_idx >= 0 ? &m->tensors[m->classifier_idx] : wmat_model_tok_embeddings(m);
}
wmat_tensor *wmat_model_linear(wmat_model *m, int layer, wmat_linear_kind k)
{
    if ((unsigned)k >= WMAT_LIN_COUNT) return NULL;
    return wmat_model_layer_tensor(m, layer, wmat__linear_role(k));
}
int64_t wmat_model_n_params(const wmat_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += wmat_tensor_nelem(&m->tensors[i]);
    return n;
}
wmat_tokenizer *wmat_model_tokenizer(wmat_model *m) { return m->tok; }
void wmat_model_set_tokenizer(wmat_model *m, wmat_tokenizer *t)
{
    if (m->tok && m->tok != t) wmat_tokenizer_free(m->tok);
    m->tok = t;
}

int wmat__tensor_make_writable(wmat_tensor *t)
{
    if (t->flags & WMAT_TF_OWNED) return WMAT_OK;
    void *d = wmat__malloc(t->nbytes);
    if (!d) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a writable copy", t->name);
    memcpy(d, t->data, t->nbytes);
    t->data = d;
    t->flags |= WMAT_TF_OWNED;
    return WMAT_OK;
}
