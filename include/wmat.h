/*
 * wmat: a toolkit for the weight matrices of transformer language models.
 *
 * This is the only public header. Conventions (see docs/ARCHITECTURE.md):
 *   - Fallible functions return an int status: WMAT_OK (0) or a negative
 *     wmat_status. The message of the last failure on the calling thread is
 *     read with wmat_last_error(); it names the file and the problem.
 *   - New objects come back through an out-parameter and are released with
 *     the matching _free function (which accepts NULL).
 *   - A weight matrix W of a linear layer has shape (out, in), row-major,
 *     and computes y = W x.
 *   - Pointers returned by accessors stay valid as long as the object that
 *     returned them is not freed, unless the comment says otherwise.
 *   - The library never prints to stdout and never exits.
 */
#ifndef WMAT_H
#define WMAT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define WMAT_API __attribute__((visibility("default")))
#else
#define WMAT_API
#endif

#define WMAT_VERSION "0.1.0"

/* ---------------------------------------------------------------- status */

typedef enum {
    WMAT_OK = 0,
    WMAT_ERR_NOMEM = -1,       /* an allocation failed */
    WMAT_ERR_IO = -2,          /* open/read/write/mmap failed */
    WMAT_ERR_FORMAT = -3,      /* the file is malformed, truncated or hostile */
    WMAT_ERR_INVALID = -4,     /* a bad argument or option */
    WMAT_ERR_UNSUPPORTED = -5, /* valid, but not something wmat does */
    WMAT_ERR_NUMERIC = -6,     /* NaN/Inf, a failed factorization */
    WMAT_ERR_CANCELLED = -7,   /* a progress callback asked to stop */
    WMAT_ERR_INTERNAL = -8
} wmat_status;

/* The message of the last failure on this thread ("" if none). */
WMAT_API const char *wmat_last_error(void);
/* A short name for a status code ("out of memory", "bad file", ...). */
WMAT_API const char *wmat_status_str(int status);
/* Set the thread's error message (printf-style) and return `status`. */
WMAT_API int wmat_set_error(int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
WMAT_API void wmat_clear_error(void);

/* ---------------------------------------------------------------- dtypes */

typedef enum {
    WMAT_F32 = 0,
    WMAT_F16 = 1,
    WMAT_BF16 = 2,
    WMAT_Q8_0 = 3, /* ggml block: fp16 scale + 32 int8, 34 bytes / 32 values */
    WMAT_Q4_0 = 4, /* ggml block: fp16 scale + 16 bytes of nibbles, 18 / 32 */
    WMAT_I32 = 5,
    WMAT_U8 = 6,
    WMAT_DTYPE_COUNT
} wmat_dtype;

/* Traits of a storage type (ggml's habit: one table, no switch forests). */
typedef struct {
    const char *name;   /* "f32", "f16", "bf16", "q8_0", "q4_0", ... */
    int block_size;     /* values per block (1 for plain types) */
    size_t block_bytes; /* bytes per block */
    int is_float;       /* usable as a weight type */
} wmat_dtype_traits;

WMAT_API const wmat_dtype_traits *wmat_dtype_info(wmat_dtype t);
/* Parse "f32", "f16", "bf16", "q8_0", "q4_0"; returns -1 if unknown. */
WMAT_API int wmat_dtype_from_name(const char *name);
/* Bytes for n values of type t; 0 if n is not a multiple of the block size
 * or the result would overflow. */
WMAT_API size_t wmat_dtype_bytes(wmat_dtype t, uint64_t n);

/* Exact conversions, round-to-nearest-even, NaN preserved as a quiet NaN. */
WMAT_API uint16_t wmat_f32_to_f16(float f);
WMAT_API float wmat_f16_to_f32(uint16_t h);
WMAT_API uint16_t wmat_f32_to_bf16(float f);
WMAT_API float wmat_bf16_to_f32(uint16_t h);

/* Convert n values from `src` of type `st` to fp32 `dst` (any type with a
 * to-float path, including q8_0 and q4_0). */
WMAT_API int wmat_to_f32(float *dst, const void *src, wmat_dtype st, uint64_t n);
/* Convert n fp32 values to type `dt` (f32, f16, bf16, q8_0, q4_0) with
 * ggml's reference rounding for the quantized types. */
WMAT_API int wmat_from_f32(void *dst, wmat_dtype dt, const float *src, uint64_t n);

/* ---------------------------------------------------------------- tensor */

#define WMAT_MAX_DIMS 4
#define WMAT_NAME_MAX 128

/* Tensor flags */
#define WMAT_TF_OWNED 1u       /* data was malloc'd by the model (else mapped) */
#define WMAT_TF_HF_ROPE 2u     /* rows in the HF rotary layout (q/k, pending) */

/* A named n-d array. shape[0] is the slowest dimension (row-major): a weight
 * matrix (out, in) has shape {out, in}. `data` is owned by the model that
 * holds the tensor. */
typedef struct {
    char name[WMAT_NAME_MAX];
    wmat_dtype dtype;
    int ndim;
    int64_t shape[WMAT_MAX_DIMS];
    void *data;
    size_t nbytes;
    uint32_t flags;
} wmat_tensor;

WMAT_API int64_t wmat_tensor_nelem(const wmat_tensor *t);

/* ---------------------------------------------------------------- arena */

/* A bump allocator: one allocation per kind of memory (llm.c's habit).
 * Allocations are 64-byte aligned and zeroed; freed all at once. */
typedef struct wmat_arena wmat_arena;

WMAT_API int wmat_arena_create(wmat_arena **out, size_t capacity);
WMAT_API void wmat_arena_free(wmat_arena *a);
/* NULL (with an error set) when the arena is full. */
WMAT_API void *wmat_arena_alloc(wmat_arena *a, size_t bytes);
WMAT_API size_t wmat_arena_used(const wmat_arena *a);
WMAT_API size_t wmat_arena_capacity(const wmat_arena *a);
WMAT_API void wmat_arena_reset(wmat_arena *a);

/* ---------------------------------------------------------------- context */

/* Progress of long work: called with done <= total; return nonzero to cancel
 * (the work then fails with WMAT_ERR_CANCELLED). */
typedef int (*wmat_progress_fn)(void *user, const char *what, uint64_t done, uint64_t total);

/* Execution context: thread count and progress reporting. Functions taking
 * a `const wmat_context *` accept NULL for the defaults. */
typedef struct {
    int n_threads;               /* <= 0: all cores */
    wmat_progress_fn progress;   /* may be NULL */
    void *progress_user;
} wmat_context;

WMAT_API wmat_context wmat_context_default(void);
/* Effective thread count of a context (NULL = default). */
WMAT_API int wmat_context_threads(const wmat_context *ctx);

/* ---------------------------------------------------------------- rng */

/* A seeded generator (xoshiro256**), deterministic across machines. */
typedef struct { uint64_t s[4]; } wmat_rng;

WMAT_API void wmat_rng_seed(wmat_rng *r, uint64_t seed);
WMAT_API uint64_t wmat_rng_u64(wmat_rng *r);
WMAT_API float wmat_rng_uniform(wmat_rng *r);  /* [0, 1) */
WMAT_API float wmat_rng_normal(wmat_rng *r);   /* N(0, 1) */

/* ---------------------------------------------------------------- linalg */

/* Dense math goes through one interface (src/linalg) with a backend picked
 * at run time. Call wmat_linalg_init() once, early, before creating threads:
 * it may tune how the BLAS library loaded (see docs/ARCHITECTURE.md). */
typedef enum {
    WMAT_GEMM_AUTO = 0,
    WMAT_GEMM_OPENBLAS = 1,
    WMAT_GEMM_ONEDNN = 2,
    WMAT_GEMM_REFERENCE = 3
} wmat_gemm_backend;

/* wmat_linalg_init: probe and self-check the backends (once), then set the
 * thread policy. n_threads > 0 is the thread count of linear algebra called
 * outside an OpenMP parallel region; <= 0 means every CPU this process may
 * use. One thread pool runs, OpenMP's: oneDNN and the reference use it, and
 * OpenBLAS is set to one thread while wmat splits large OpenBLAS GEMMs over
 * OpenMP threads (an idle OpenBLAS pool spins for ~0.1 s after each call and
 * slows OpenMP work in that window many times over). The user's variables
 * always win: with OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS
 * set, OpenBLAS's count stays as loaded; with OMP_NUM_THREADS set, OpenMP's
 * does. Calls from inside a parallel region use one thread. Without this
 * call linalg initializes lazily and changes no thread setting. */
WMAT_API int wmat_linalg_init(int n_threads);
WMAT_API int wmat_gemm_set_backend(wmat_gemm_backend b);
WMAT_API wmat_gemm_backend wmat_gemm_get_backend(void);
WMAT_API const char *wmat_gemm_backend_name(wmat_gemm_backend b);
/* 1 if backend b is available in this build and on this machine. */
WMAT_API int wmat_gemm_backend_available(wmat_gemm_backend b);

/* C (M, N) = alpha * op(A) op(B) + beta * C, row-major, explicit leading
 * dimensions. op(A) is (M, K), op(B) is (K, N). */
WMAT_API void wmat_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta,
                         float *C, int ldc);

/* One line on how linalg set itself up: the OpenBLAS core and where it came
 * from, which backends passed their self-check (a small GEMM against a
 * double-precision reference) and which AUTO uses. Valid until the next
 * wmat_linalg_init. */
WMAT_API const char *wmat_linalg_status(void);

/* OpenBLAS core type. A DYNAMIC_ARCH OpenBLAS picks its kernels when it is
 * loaded; some builds do not recognise newer CPUs and fall back to generic
 * kernels ("Prescott", "Sandybridge", ...) that run several times slower.
 * The fix is OPENBLAS_CORETYPE in the environment before the library
 * loads, so a running process cannot apply it to itself.
 *
 * wmat_blas_tune_advice: 1 if OpenBLAS loaded a weaker core than this CPU
 * supports and OPENBLAS_CORETYPE is unset, with the value to set written to
 * `value` (cap bytes; 32 is enough); 0 if nothing is to be done (value "").
 * Programs embedding libwmat can set the variable in their launcher, or
 * call wmat_blas_tune_reexec.
 *
 * wmat_blas_tune_reexec: call first thing in main(), before any thread or
 * open file matters. If tuning is needed it sets OPENBLAS_CORETYPE and
 * WMAT_BLAS_TUNED and re-executes /proc/self/exe with the same argv (it
 * does not return). It does nothing and returns 0 when the user set
 * OPENBLAS_CORETYPE, when WMAT_BLAS_TUNED is already set (so it happens at
 * most once), when WMAT_NO_BLAS_TUNE is set, or when argv holds
 * "--no-blas-tune" (before any "--"). Returns a negative status, with the
 * environment restored, if execv failed; the program can go on untuned.
 * wmat_linalg_init then checks the tuned kernels against a reference and
 * falls back to another backend if they are wrong (see wmat_linalg_status). */
WMAT_API int wmat_blas_tune_advice(char *value, size_t cap);
WMAT_API int wmat_blas_tune_reexec(int argc, char **argv);

/* Write a report of the machine and the linear-algebra setup to `out`: CPU
 * model and features (avx2, avx512, vnni, bf16, amx), OpenBLAS config and
 * core, oneDNN version, thread counts, and figures measured now: fp32 GEMM
 * GFLOP/s per backend, int8 GOP/s, bf16 GFLOP/s, memcpy GB/s. quick != 0
 * uses small sizes (well under a second); otherwise 2048^3 GEMMs (seconds).
 * Calls wmat_linalg_init(n_threads). This is what `wmat sysinfo` prints. */
WMAT_API int wmat_sysinfo_report(FILE *out, int n_threads, int quick);

/* ---------------------------------------------------------------- tokenizer */

typedef struct wmat_tokenizer wmat_tokenizer;

/* Load a llama2.c tokenizer file (tok512.bin, tokenizer.bin). */
WMAT_API int wmat_tokenizer_load_llama2c(wmat_tokenizer **out, const char *path, int vocab_size);
/* Build from arrays (GGUF vocabularies). Copies the strings.
 * types: SentencePiece token types (1 normal, 2 unknown, 3 control, 6 byte);
 * may be NULL. */
WMAT_API int wmat_tokenizer_from_vocab(wmat_tokenizer **out, int n_vocab, const char *const *pieces,
                                       const size_t *piece_lens, const float *scores,
                                       const int32_t *types, int bos_id, int eos_id);
WMAT_API void wmat_tokenizer_free(wmat_tokenizer *t);

WMAT_API int wmat_tokenizer_vocab_size(const wmat_tokenizer *t);
WMAT_API int wmat_tokenizer_bos(const wmat_tokenizer *t);
WMAT_API int wmat_tokenizer_eos(const wmat_tokenizer *t);
/* The piece of token id (raw, e.g. "<0x0A>" or " the") and its length. */
WMAT_API const char *wmat_tokenizer_piece(const wmat_tokenizer *t, int id, size_t *len);
WMAT_API float wmat_tokenizer_score(const wmat_tokenizer *t, int id);
WMAT_API int32_t wmat_tokenizer_type(const wmat_tokenizer *t, int id);

/* Encode `len` bytes of text exactly as llama2.c's run.c encode() does
 * (dummy-prefix space, UTF-8 codepoint lookup, byte fallback, merges by
 * score), in O(n log n). *out_ids is malloc'd (caller frees); at most
 * len + 3 ids. */
WMAT_API int wmat_tokenizer_encode(const wmat_tokenizer *t, const char *text, size_t len, int bos,
                                   int eos, int32_t **out_ids, size_t *n_out);
/* Text of token `id` following token `prev` as run.c's decode() renders it
 * (leading space dropped after BOS, "<0xXX>" to the raw byte). Returns a
 * pointer into the tokenizer or into `buf` (at least 8 bytes); *len set. */
WMAT_API const char *wmat_tokenizer_decode(const wmat_tokenizer *t, int prev, int id, char *buf,
                                           size_t *len);
/* Write the tokenizer as a llama2.c tokenizer file (atomic). */
WMAT_API int wmat_tokenizer_save_llama2c(const wmat_tokenizer *t, const char *path);

/* ---------------------------------------------------------------- model */

typedef enum {
    WMAT_FMT_UNKNOWN = 0,
    WMAT_FMT_LLAMA2C = 1,
    WMAT_FMT_GGUF = 2,
    WMAT_FMT_HF = 3
} wmat_format;

WMAT_API const char *wmat_format_name(wmat_format f);
/* Parse "llama2c", "gguf", "hf"; WMAT_FMT_UNKNOWN otherwise. */
WMAT_API wmat_format wmat_format_from_name(const char *name);

/* LLaMA-family architecture. */
typedef struct {
    int dim;          /* model width */
    int hidden_dim;   /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int vocab_size;
    int seq_len;      /* maximum context */
    int head_dim;     /* dim / n_heads */
    float rope_theta;
    float norm_eps;
    int tied_embeddings; /* classifier shares the token embedding */
    int bos_id, eos_id;
} wmat_config;

/* Canonical tensor roles, per layer or global. Names are Hugging Face's
 * (model.layers.N.self_attn.q_proj.weight, ...); the rotary layout inside
 * wmat is llama2.c's/GGUF's (interleaved pairs). */
typedef enum {
    WMAT_W_ATTN_NORM = 0,
    WMAT_W_Q,
    WMAT_W_K,
    WMAT_W_V,
    WMAT_W_O,
    WMAT_W_FFN_NORM,
    WMAT_W_GATE, /* w1 */
    WMAT_W_DOWN, /* w2 */
    WMAT_W_UP,   /* w3 */
    WMAT_W_LAYER_COUNT
} wmat_layer_weight;

/* The seven linear layers of a block, in forward order. */
typedef enum {
    WMAT_LIN_Q = 0, WMAT_LIN_K, WMAT_LIN_V, WMAT_LIN_O, WMAT_LIN_GATE, WMAT_LIN_UP, WMAT_LIN_DOWN,
    WMAT_LIN_COUNT
} wmat_linear_kind;
WMAT_API const char *wmat_linear_name(wmat_linear_kind k); /* "q","k","v","o","gate","up","down" */

typedef struct wmat_model wmat_model;

/* Load options. */
typedef struct {
    const char *tokenizer_path; /* llama2.c tokenizer for .bin/HF; NULL: look beside the model */
    int materialize_f32;        /* 1: convert every tensor to fp32 canonical layout now */
    int check_finite;           /* 1: reject NaN/Inf weights (costs a pass over the data) */
} wmat_load_params;

WMAT_API wmat_load_params wmat_load_default_params(void);

/* Detect the format of a path: a directory is HF, "GGUF" magic is GGUF, else
 * a llama2.c checkpoint. */
WMAT_API wmat_format wmat_detect_format(const char *path);

/* Load a model (llama2.c .bin, .gguf, or HF directory). Weights are
 * memory-mapped where the stored layout allows. */
WMAT_API int wmat_model_load(wmat_model **out, const char *path, const wmat_load_params *p);
WMAT_API void wmat_model_free(wmat_model *m);

/* Convert all tensors to fp32 in wmat's canonical layout (required by the
 * runtime; wmat_model_load does it when materialize_f32 is set). */
WMAT_API int wmat_model_materialize(wmat_model *m);

WMAT_API const wmat_config *wmat_model_config(const wmat_model *m);
WMAT_API wmat_format wmat_model_format(const wmat_model *m);
WMAT_API const char *wmat_model_path(const wmat_model *m);
WMAT_API int wmat_model_n_tensors(const wmat_model *m);
WMAT_API wmat_tensor *wmat_model_tensor(wmat_model *m, int i);
WMAT_API wmat_tensor *wmat_model_find(wmat_model *m, const char *name);
/* Tensor of a layer role (NULL if layer/role out of range). */
WMAT_API wmat_tensor *wmat_model_layer_tensor(wmat_model *m, int layer, wmat_layer_weight w);
WMAT_API wmat_tensor *wmat_model_tok_embeddings(wmat_model *m);
WMAT_API wmat_tensor *wmat_model_final_norm(wmat_model *m);
/* The classifier (the token embedding when tied). */
WMAT_API wmat_tensor *wmat_model_classifier(wmat_model *m);
/* Linear weight of a layer by kind (q..down). */
WMAT_API wmat_tensor *wmat_model_linear(wmat_model *m, int layer, wmat_linear_kind k);
WMAT_API int64_t wmat_model_n_params(const wmat_model *m);
/* Tokenizer (NULL if the model has none). */
WMAT_API wmat_tokenizer *wmat_model_tokenizer(wmat_model *m);
/* Give the model a tokenizer (the model takes ownership, frees the old one). */
WMAT_API void wmat_model_set_tokenizer(wmat_model *m, wmat_tokenizer *t);

/* Create a model with fresh fp32 tensors (zeroed) for a config; used by
 * training and tests. */
WMAT_API int wmat_model_create(wmat_model **out, const wmat_config *cfg);

/* Save options. */
typedef struct {
    wmat_format format;
    wmat_dtype dtype;           /* weight type of 2-D tensors (norms stay f32) */
    const char *tokenizer_path; /* llama2c: where to write the tokenizer (NULL: beside OUT) */
} wmat_save_params;

WMAT_API wmat_save_params wmat_save_default_params(void);

/* Write the (materialized) model. Output is atomic: written to a temporary
 * file in the same directory, synced, then renamed. */
WMAT_API int wmat_model_save(wmat_model *m, const char *path, const wmat_save_params *p);

/* ---------------------------------------------------------------- runtime */

/* Observation hook: receives the input activations of a linear layer during a
 * batched forward. X is (T, in) row-major, valid only during the call. For
 * the classifier, kind == WMAT_LIN_COUNT and layer == n_layers. Return
 * nonzero to abort the forward pass (it then fails with WMAT_ERR_CANCELLED). */
typedef int (*wmat_linear_hook)(void *user, int layer, wmat_linear_kind kind, const float *X, int T,
                                int in_features, const wmat_tensor *W);

typedef struct wmat_runtime wmat_runtime;

typedef struct {
    int max_batch_tokens;   /* window length for batched forward; <= 0: seq_len */
    int kv_cache_len;       /* decode positions; <= 0: seq_len */
    const wmat_context *ctx;
} wmat_runtime_params;

WMAT_API wmat_runtime_params wmat_runtime_default_params(void);

/* A runtime holds activation buffers (one arena) and the KV cache for a model.
 * The model must be materialized and outlive the runtime. */
WMAT_API int wmat_runtime_create(wmat_runtime **out, wmat_model *m, const wmat_runtime_params *p);
WMAT_API void wmat_runtime_free(wmat_runtime *rt);
WMAT_API void wmat_runtime_set_hook(wmat_runtime *rt, wmat_linear_hook fn, void *user);
WMAT_API size_t wmat_runtime_bytes(const wmat_runtime *rt);
WMAT_API int wmat_runtime_max_tokens(const wmat_runtime *rt);
WMAT_API int wmat_runtime_vocab(const wmat_runtime *rt);
WMAT_API const wmat_context *wmat_runtime_context(const wmat_runtime *rt);

/* Batched forward of tokens[0..T) at positions 0..T-1 from an empty cache.
 * logits: (T, vocab) or NULL when only hooks are wanted. */
WMAT_API int wmat_forward(wmat_runtime *rt, const int32_t *tokens, int T, float *logits);
/* One-token decode at position pos using the KV cache (positions < pos must
 * have been decoded). logits: (vocab). */
WMAT_API int wmat_decode(wmat_runtime *rt, int32_t token, int pos, float *logits);

/* ---------------------------------------------------------------- eval */

typedef struct {
    double mean_nll;
    double ppl;
    uint64_t tokens_scored;
    int windows;
    double seconds;
    double tokens_per_s;
} wmat_eval_result;

/* Perplexity of a token stream: windows of ctx+1 tokens overlapping by one
 * (window k = tokens k*ctx .. k*ctx+ctx), each from an empty cache, all ctx
 * predictions scored, a last partial window too. max_windows <= 0: all. */
WMAT_API int wmat_eval_tokens(wmat_runtime *rt, const int32_t *tokens, size_t n, int ctx_len,
                              int max_windows, wmat_eval_result *res);

/* Read a file of little-endian uint16 token ids. *out malloc'd. */
WMAT_API int wmat_read_tokens_u16(const char *path, int32_t **out, size_t *n);
/* Write ids as little-endian uint16 (atomic); ids must be in 0..65535. */
WMAT_API int wmat_write_tokens_u16(const char *path, const int32_t *ids, size_t n);
/* Read a whole file into memory (NUL-terminated). *out malloc'd. */
WMAT_API int wmat_read_file(const char *path, char **out, size_t *len);

/* ---------------------------------------------------------------- sampling */

/* Sample from logits (modified in place): temp <= 0 is argmax; top_p in
 * (0,1) does nucleus sampling. */
WMAT_API int wmat_sample(float *logits, int n, float temp, float top_p, wmat_rng *rng);

#ifdef __cplusplus
}
#endif
#endif /* WMAT_H */
