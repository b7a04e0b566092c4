/* The model object shared by the format readers and writers (src/io) and the
 * runtime (src/model). Private: the public view is the accessors in wmat.h. */
#ifndef WMAT_MODEL_INTERNAL_H
#define WMAT_MODEL_INTERNAL_H

#include "../core/internal.h"

/* Produces tensor t's fp32 values (canonical layout) into dst while a
 * writer saves the model; see wmat_model.fill. */
typedef int (*wmat_tensor_fill_fn)(void *user, const wmat_tensor *t, float *dst);

struct wmat_model {
    wmat_config cfg;
    wmat_format format;
    char *path;

    wmat_tensor *tensors; /* canonical (HF) names */
    int n_tensors, cap_tensors;

    /* role -> index into tensors (-1: absent), filled by wmat__model_bind */
    int *layer_idx; /* (n_layers, WMAT_W_LAYER_COUNT) */
    int tok_embd_idx, final_norm_idx, classifier_idx; /* classifier -1 when tied */
    int *sc_idx; /* (n_layers, 2): attention and MLP shortcut matrices when cfg.shortcuts, else NULL */

    wmat_tokenizer *tok;

    wmat_map *maps; /* files this model's tensors point into */
    int n_maps;

    /* Tensors without data (data NULL, nbytes 0) are produced while saving:
     * every writer asks `fill` for one such tensor just before it writes it,
     * so a model computed tensor by tensor (a merge) is never whole in
     * memory, whatever the output format. NULL: every tensor has data. */
    wmat_tensor_fill_fn fill;
    void *fill_user;
};

/* The fp32 values of t for a writer: t->data when it has data, else the
 * model's fill run into buf (nelem floats). *out is set to either. */
int wmat__tensor_f32_for_save(const wmat_model *m, const wmat_tensor *t, float *buf, const float **out);
/* Elements of the largest tensor that only `fill` provides (0: none). */
int64_t wmat__model_max_fill(const wmat_model *m);

/* Out of core (docs/SCALING.md): drop the pages of tensor t that lie in
 * one of m's file mappings from the resident set once a streaming consumer
 * is done with them (an owned tensor, or one outside every mapping, is left
 * alone). t == NULL: every page of every mapping of m. Results never
 * change: the pages are read again from the file when needed. */
void wmat__model_release(const wmat_model *m, const wmat_tensor *t);
/* The mapping of m that holds address p (NULL: none; p may be anywhere). */
const wmat_map *wmat__model_map_at(const wmat_model *m, const void *p);
/* Out of core: move tensor t's owned storage (an object kind with files,
 * or a plain non-f32 kind such as ggml blocks) into a new temporary file in
 * dir (NULL: $TMPDIR, else /tmp), unlinked at once, and point t at a
 * read-only mapping of it that m keeps (so wmat__model_release applies).
 * The values are unchanged; a kind without save/load, f32 and tensors that
 * are not owned are left as they are. On error t is unchanged. */
int wmat__model_spill(wmat_model *m, wmat_tensor *t, const char *dir);
/* Scratch memory in a new unlinked file of `bytes` in dir (NULL or "": as
 * above), reserved on disk and mapped shared read-write into *out (free it
 * with wmat__unmap). Pages dropped with wmat__pages_release keep their
 * contents (they stay in the page cache and the file); what the calibration
 * streams use out of core (src/quant/calib.c). */
int wmat__spill_scratch(const char *dir, size_t bytes, const char *what, wmat_map *out);
/* The same for every tensor of block `layer` (its weights, norms and
 * shortcut matrices). */
void wmat__model_release_layer(const wmat_model *m, int layer);
/* Bytes of m's tensors that point into its file mappings. */
uint64_t wmat__model_mapped_bytes(const wmat_model *m);
/* The size above which eval and quantize go out of core on their own
 * (wmat_eval_params.low_mem, wmat_quantize_params.low_mem = 0): 2 GiB of
 * mapped weights. */
#define WMAT_LOW_MEM_AUTO_BYTES ((uint64_t)2 << 30)
int wmat__model_low_mem(const wmat_model *m, int low_mem);

/* Canonical names: "model.embed_tokens.weight", "model.norm.weight",
 * "lm_head.weight", "model.layers.N.<role>.weight". */
extern const char *const wmat__layer_role_names[WMAT_W_LAYER_COUNT];
#define WMAT_NAME_TOK_EMBD "model.embed_tokens.weight"
#define WMAT_NAME_FINAL_NORM "model.norm.weight"
#define WMAT_NAME_CLASSIFIER "lm_head.weight"
void wmat__layer_tensor_name(char *buf, size_t n, int layer, wmat_layer_weight w);
/* A sliced model's residual shortcut matrices (cfg.shortcuts; dim x dim,
 * y = S x): "model.layers.N.attn_shortcut.weight" (mlp = 0, before the
 * attention's sum) and "...mlp_shortcut.weight" (mlp = 1). NULL when the
 * model has none. */
void wmat__shortcut_name(char *buf, size_t n, int layer, int mlp);
/* The Gaussian-mixture attention mask's vector of a layer (wmat_config.gmm_kernels):
 * "model.layers.N.self_attn.gmm_mask". */
void wmat__gmm_mask_name(char *buf, size_t n, int layer);
wmat_tensor *wmat__model_shortcut(wmat_model *m, int layer, int mlp);

/* New empty model: copies cfg (may be NULL and set later) and path. */
int wmat__model_new(wmat_model **out, const wmat_config *cfg, wmat_format fmt, const char *path);
/* Append a tensor; `data` is borrowed (mapped) unless flags has
 * WMAT_TF_OWNED, in which case the model frees it with wmat__free. On failure
 * an owned `data` is freed too. */
/* Give a tensor that points into a mapping an owned copy of its data, so
 * that methods may write it (an owned tensor is left as it is). */
int wmat__tensor_make_writable(wmat_tensor *t);
int wmat__model_add_tensor(wmat_model *m, const char *name, wmat_dtype dtype, int ndim,
                           const int64_t *shape, void *data, uint32_t flags);
/* Keep a mapping alive for the model's lifetime (takes ownership). */
int wmat__model_add_map(wmat_model *m, wmat_map *map);
/* Fill cfg-derived fields (head_dim) and the role table; check that every
 * expected tensor exists with the shape the config implies. Errors name
 * m->path and the tensor. */
int wmat__model_bind(wmat_model *m);
/* Fill in defaults and check a config for sanity (positive sizes, heads
 * divide dim, kv heads divide heads, even head_dim). `what` names the source
 * in messages. */
int wmat__config_check(wmat_config *cfg, const char *what);

/* HF <-> llama2.c rotary row order for q (n_heads) or k (n_kv_heads):
 * dst and src are (n_heads*head_dim, cols); they must not overlap. */
void wmat__rope_unpermute_rows(void *dst, const void *src, int n_heads, int head_dim, size_t row_bytes);
void wmat__rope_unpermute_hf(float *dst, const float *src, int n_heads, int head_dim, int64_t cols);
void wmat__rope_permute_hf(float *dst, const float *src, int n_heads, int head_dim, int64_t cols);

/* config.json text for a model (HF LlamaConfig fields); extra members may
 * be NULL. Returns the length, or -1 if it does not fit. */
int wmat__hf_config_json(const wmat_config *c, wmat_dtype dt, const char *extra, char *buf, size_t n);

/* The format registry (formats.c): load with format f's reader, save with
 * p->format's writer. */
int wmat__format_load(wmat_format f, wmat_model **out, const char *path, const wmat_load_params *p);
int wmat__format_save(wmat_model *m, const char *path, const wmat_save_params *p);

/* Format readers and writers. Loaders return a model whose tensors may be in
 * their stored dtype/layout; wmat_model_load then materializes on request.
 * Savers get a materialized model (all f32, canonical). */
int wmat__llama2c_load(wmat_model **out, const char *path, const wmat_load_params *p);
int wmat__llama2c_save(wmat_model *m, const char *path, const wmat_save_params *p);
int wmat__gguf_load(wmat_model **out, const char *path, const wmat_load_params *p);
int wmat__gguf_save(wmat_model *m, const char *path, const wmat_save_params *p);
int wmat__hf_load(wmat_model **out, const char *path, const wmat_load_params *p);
int wmat__hf_save(wmat_model *m, const char *path, const wmat_save_params *p);
/* HF output with packed linear weights written by a hook as tensors of
 * their own (GPTQ's qweight/qzeros/scales/g_idx, src/io/gptq.c): entries()
 * fills at most max_entries entries for one packed layer weight (rope_heads
 * > 0: q or k, whose output rows HF orders for its rotary layout) and
 * returns how many, or a negative status; config_extra goes into
 * config.json, extra_text into the file extra_file beside it (both may be
 * NULL), committed with the others. */
struct wmat_st_entry; /* safetensors.h */
typedef struct {
    int max_entries;
    int (*entries)(void *user, const wmat_model *m, const wmat_tensor *t, int rope_heads, int head_dim,
                   struct wmat_st_entry *out);
    void *user;
    const char *config_extra;
    const char *extra_file, *extra_text;
} wmat__hf_packed_hook;
int wmat__gptq_save(wmat_model *m, const char *path, const wmat_save_params *p);
int wmat__gptq_load(wmat_model **out, const char *path, const wmat_load_params *p);
int wmat__gptq_dir_detect(const char *dir);
int wmat__hf_save_with(wmat_model *m, const char *path, const wmat_save_params *p, const wmat__hf_packed_hook *hook);

/* ---- the native directory (native.c): dense, packed and other kinds */

/* 1 if `dir` is a native quantized directory (holds quant_config.json). */
int wmat__quant_dir_detect(const char *dir);
/* Load a native quantized directory; packed tensors point into the mapping
 * of model.safetensors. */
int wmat__quant_load(wmat_model **out, const char *dir, const wmat_load_params *p);

/* ---- GGUF export hook (defined in src/io/gguf.c)
 * wmat__gguf_save_with: wmat__gguf_save, but `enc` is asked first about
 * every tensor: it returns 1 and sets *dt when it encodes the tensor itself
 * (then it is called again with dst != NULL to write exactly
 * wmat_dtype_bytes(*dt, nelem) bytes), 0 to let the writer handle it (it
 * must then be a materialized f32 tensor, written as `matrix_dtype` if a
 * matrix, f32 if a vector), or a negative status. `file_dtype` is what
 * general.file_type records. */
typedef int (*wmat_gguf_encode_fn)(void *user, const wmat_tensor *t, wmat_dtype *dt, void *dst);
/* The indices of m's tensors in the order the GGUF writer writes them
 * (at most cap; 0 when m is not bound to the LLaMA roles). */
int wmat__gguf_write_order(const wmat_model *m, int *idx, int cap);
int wmat__gguf_save_with(wmat_model *m, const char *path, wmat_dtype matrix_dtype, wmat_dtype file_dtype,
                         wmat_gguf_encode_fn enc, void *user);


#endif
