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
    WMAT_OBJ = 7, /* a weight-operator object (packed quantized, low-rank, ...): see "weight kinds" */
    /* ggml's other block types (docs/FORMATS.md): read from GGUF and run
     * in place, and written (Q4_1, Q5_0, Q5_1 by ggml's reference rule) */
    WMAT_Q4_1 = 8,    /* 32 values: fp16 scale and min + nibbles, 20 bytes */
    WMAT_Q5_0 = 9,    /* 32 values: fp16 scale + 5-bit codes, 22 bytes */
    WMAT_Q5_1 = 10,   /* 32 values: fp16 scale and min + 5-bit codes, 24 bytes */
    WMAT_Q2_K = 11,   /* 256 values: 4-bit scales/mins of 16, 2-bit codes, 84 bytes */
    WMAT_Q3_K = 12,   /* 256 values: 6-bit scales of 16, 3-bit codes, 110 bytes */
    WMAT_Q4_K = 13,   /* 256 values: 6-bit scales/mins of 32, 4-bit codes, 144 bytes */
    WMAT_Q5_K = 14,   /* 256 values: as Q4_K with a 5th bit, 176 bytes */
    WMAT_Q6_K = 15,   /* 256 values: int8 scales of 16, 6-bit codes, 210 bytes */
    WMAT_IQ4_NL = 16, /* 32 values: fp16 scale + 4-bit indices into a non-uniform grid, 18 bytes */
    WMAT_IQ4_XS = 17, /* 256 values: 6-bit scales of 32 + IQ4_NL's grid, 136 bytes */
    WMAT_DTYPE_COUNT,
    WMAT_QPACKED = WMAT_OBJ /* packed quantized storage is the first object kind (data: a wmat_qtensor) */
} wmat_dtype;

/* Traits of a storage type (ggml's habit: one table, no switch forests). */
typedef struct {
    const char *name;   /* "f32", "f16", "bf16", "q8_0", "q4_0", ... */
    int block_size;     /* values per block (1 for plain types) */
    size_t block_bytes; /* bytes per block */
    int is_float;       /* usable as a weight type */
} wmat_dtype_traits;

WMAT_API const wmat_dtype_traits *wmat_dtype_info(wmat_dtype t);
/* Parse a dtype name (wmat_dtype_info(t)->name: "f32", "q4_k", ...); returns -1 if unknown. */
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

/* ---------------------------------------------------------------- weight kinds */
/* Every 2-D weight is an operator of a registered kind that the runtime
 * multiplies by in its stored form: dense "f32", "f16", "bf16"; ggml blocks
 * "q8_0", "q4_0"; "qpacked" (wmat's packed 2..8-bit codes); "lowrank"
 * (W = A B). Plain kinds keep an array of their dtype in `data`; object
 * kinds have dtype WMAT_OBJ. docs/ARCHITECTURE.md says how to add one. */
WMAT_API int wmat_weight_kind_count(void);
/* Name and one-line summary of kind i (NULL past the end). */
WMAT_API const char *wmat_weight_kind_name(int i, const char **summary);
/* The kind of a tensor ("f32", "q4_0", "qpacked", "lowrank", ...); NULL when
 * it is no weight (a 1-D or integer tensor). */
WMAT_API const char *wmat_tensor_kind(const wmat_tensor *t);
/* Rows r0 .. r0+nr-1 of a 2-D weight of any kind as fp32 (nr, cols). */
WMAT_API int wmat_tensor_dequant_rows(const wmat_tensor *t, int64_t r0, int64_t nr, float *out);
/* Bits per weight as stored (codes, scales, factors: everything the kind keeps). */
WMAT_API double wmat_tensor_bits_per_weight(const wmat_tensor *t);
/* One line about the instance ("f16", "qpacked 4b sym g32 along inputs", "lowrank r16 f32"). */
WMAT_API void wmat_tensor_describe(const wmat_tensor *t, char *buf, size_t n);

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

/* The GEMM backends of src/linalg (see the linalg section). */
typedef enum {
    WMAT_GEMM_AUTO = 0,
    WMAT_GEMM_OPENBLAS = 1,
    WMAT_GEMM_ONEDNN = 2,
    WMAT_GEMM_REFERENCE = 3
} wmat_gemm_backend;

/* Execution context: threads, progress reporting and the choices kernels
 * make. Settings live here, not in the process: every runtime keeps a copy
 * of its context and passes its thread count, GEMM backend and int8 choice
 * to each kernel and GEMM it calls, so two runtimes with different contexts
 * in one process (used in turns or from two threads at once) give what each
 * gives alone. Functions taking a `const wmat_context *` accept NULL for the
 * defaults. The defaults are no wmat setting: the machine, WMAT_GEMM_BACKEND
 * and WMAT_QACT8 in the environment, and the calling thread's OpenMP default
 * thread count (OpenMP's own: OMP_NUM_THREADS, or wmat_linalg_init). */
/* A communicator for data-parallel work over MPI ranks (src/core/comm.c;
 * docs/SCALING.md). Built with -DWMAT_WITH_MPI=ON it wraps a duplicate of
 * MPI_COMM_WORLD; without MPI it is a one-rank stub, so code written for it
 * runs unchanged in one process. A context without one (NULL) is one rank. */
typedef struct wmat_comm wmat_comm;

typedef struct {
    int n_threads;               /* <= 0: the calling thread's OpenMP default (all cores unless
                                    OMP_NUM_THREADS or wmat_linalg_init said otherwise) */
    wmat_progress_fn progress;   /* may be NULL */
    void *progress_user;
    wmat_gemm_backend gemm;      /* fp32 GEMMs; AUTO: the process default (wmat_gemm_get_backend) */
    int act8;                    /* int8 activations in quantized decode: 1 on, 0 off, -1 default (on unless
                                    WMAT_QACT8=0 in the environment) */
    const wmat_comm *comm;       /* data parallelism (training, calibration): NULL: one process */
} wmat_context;

WMAT_API wmat_context wmat_context_default(void);
/* Effective thread count of a context (NULL = default). */
WMAT_API int wmat_context_threads(const wmat_context *ctx);

/* 1 when this build has MPI (-DWMAT_WITH_MPI=ON). */
WMAT_API int wmat_comm_mpi_built(void);
/* The communicator of all ranks of the job (a duplicate of MPI_COMM_WORLD;
 * errors on it return instead of aborting). The library calls MPI_Init
 * only when init_mpi is 1 and MPI is not initialized yet (it then calls
 * MPI_Finalize in wmat_comm_free); with init_mpi 0 the program must have
 * initialized MPI. Without MPI in the build: a one-rank communicator. */
WMAT_API int wmat_comm_create(wmat_comm **out, int init_mpi);
WMAT_API void wmat_comm_free(wmat_comm *c);
/* Rank and size (NULL: 0 and 1). */
WMAT_API int wmat_comm_rank(const wmat_comm *c);
WMAT_API int wmat_comm_size(const wmat_comm *c);
/* In place over all ranks: the sum (float, double) or the maximum (float)
 * of n elements. Every rank must call with the same n. */
WMAT_API int wmat_comm_allreduce_sum_f32(const wmat_comm *c, float *buf, size_t n);
WMAT_API int wmat_comm_allreduce_sum_f64(const wmat_comm *c, double *buf, size_t n);
WMAT_API int wmat_comm_allreduce_max_f32(const wmat_comm *c, float *buf, size_t n);
/* root's bytes to every rank. */
WMAT_API int wmat_comm_bcast(const wmat_comm *c, void *buf, size_t bytes, int root);
WMAT_API int wmat_comm_barrier(const wmat_comm *c);
/* For programs, not the library (which never ends the process): end every
 * rank of the job with this exit code (MPI_Abort; exit() without MPI). */
WMAT_API void wmat_comm_abort(const wmat_comm *c, int code);

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
/* wmat_linalg_init: probe and self-check the backends (once), then set the
 * calling thread's OpenMP default thread count to n_threads (> 0) or to
 * every CPU this process may use (<= 0): the count of contexts that leave
 * n_threads at 0 and of wmat_sgemm. That is OpenMP's own per-thread default
 * (omp_set_num_threads), not a wmat setting; a context with a count is not
 * affected by it. One thread pool runs, OpenMP's: oneDNN and the reference
 * use it, and OpenBLAS is set to one thread at the first use of linalg
 * while wmat splits large OpenBLAS GEMMs over the call's OpenMP threads (an
 * idle OpenBLAS pool spins for ~0.1 s after each call and slows OpenMP work
 * in that window many times over). The user's variables always win: with
 * OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS set, OpenBLAS's
 * count stays as loaded; with OMP_NUM_THREADS set, OpenMP's does. Calls
 * from inside a parallel region use one thread. Without this call linalg
 * initializes lazily at its first use. */
WMAT_API int wmat_linalg_init(int n_threads);
/* The process default backend, what WMAT_GEMM_AUTO in a context means:
 * WMAT_GEMM_BACKEND=openblas|onednn|reference from the environment when
 * that backend is available, read once at the first use of linalg, else
 * WMAT_GEMM_AUTO (picked per call by shape and availability). There is no
 * setter: a program that wants another backend puts it in its contexts. */
WMAT_API wmat_gemm_backend wmat_gemm_get_backend(void);
WMAT_API const char *wmat_gemm_backend_name(wmat_gemm_backend b);
/* 1 if backend b is available in this build and on this machine. */
WMAT_API int wmat_gemm_backend_available(wmat_gemm_backend b);

/* C (M, N) = alpha * op(A) op(B) + beta * C, row-major, explicit leading
 * dimensions. op(A) is (M, K), op(B) is (K, N). wmat_sgemm runs on the
 * defaults (the default backend, the calling thread's OpenMP thread count);
 * wmat_sgemm_ctx on a context's gemm and n_threads (NULL: the defaults; a
 * backend that is not available falls back to AUTO's pick) and returns
 * WMAT_ERR_INVALID for bad sizes, where wmat_sgemm only sets the error.
 * Both leave C untouched on bad sizes. */
WMAT_API void wmat_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta,
                         float *C, int ldc);
WMAT_API int wmat_sgemm_ctx(const wmat_context *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* One line on how linalg set itself up: the OpenBLAS core and where it came
 * from, which backends passed their self-check (a small GEMM against a
 * double-precision reference), which AUTO uses and the default backend.
 * Written once at the first use; valid for the life of the process. */
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
    WMAT_FMT_HF = 3,
    WMAT_FMT_QUANT = 4, /* native quantized directory (docs/FORMATS.md) */
    WMAT_FMT_GPTQ = 5   /* GPTQ checkpoint (HF directory with qweight/qzeros/scales/g_idx): written, not read */
} wmat_format;

WMAT_API const char *wmat_format_name(wmat_format f);
/* Parse "llama2c", "gguf", "hf"; WMAT_FMT_UNKNOWN otherwise. */
WMAT_API wmat_format wmat_format_from_name(const char *name);
/* The output format a path names by its extension, as every writing
 * command reads it: ".gguf" GGUF, ".bin" llama2.c, anything else an HF
 * directory. */
WMAT_API wmat_format wmat_format_for_path(const char *path);

/* LLaMA-family architecture. */
typedef struct {
    int dim;          /* model width */
    int hidden_dim;   /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int vocab_size;
    int seq_len;      /* maximum context */
    int head_dim;     /* attn_dim (or dim) / n_heads */
    float rope_theta;
    float norm_eps;
    int tied_embeddings; /* classifier shares the token embedding */
    int bos_id, eos_id;
    /* Sliced models (SliceGPT, docs/DECOMP.md); 0 in an ordinary LLaMA. */
    int attn_dim;  /* n_heads * head_dim when it differs from dim (0: dim) */
    int norm_dim;  /* the RMSNorms' divisor x / sqrt(sum x^2 / norm_dim + eps) (0: dim) */
    int shortcuts; /* 1: every block maps its residual through a (dim x dim) matrix
                      before each sum: xmid = S_attn x + o(..), out = S_mlp xmid + down(..) */
    /* Gaussian-mixture attention mask (docs/EXPERIMENTS.md, "gmm-mask"): K
     * kernels per head (1..16) scale each head's scores by a learned mixture
     * of Gaussians over the distance i - j; its parameters are one f32
     * vector per layer ("model.layers.N.self_attn.gmm_mask", n_heads K 2).
     * Stored only in the native directory ('quant'); 0: plain causal
     * attention. */
    int gmm_kernels;
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
    int materialize_f32;        /* 1: canonical layout now, every tensor fp32 (or only the norms with keep_stored) */
    int keep_stored;            /* with materialize_f32: weights stay in their stored kind (f16, bf16, q8_0,
                                   q4_0 run as stored: the runtime needs no fp32 copy) */
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
/* What the runtime needs without an fp32 copy: canonical layout, vectors
 * fp32, 2-D weights left in their stored kind (f16, bf16, q8_0, q4_0 rows
 * reordered in place of type where HF's rotary order needs it). */
WMAT_API int wmat_model_prepare_stored(wmat_model *m);
/* wmat_model_materialize, and weights of object kinds (packed, low-rank)
 * expanded to dense fp32 too: for work that edits weights (quantize, train,
 * decompose) starting from a model of any kind. */
WMAT_API int wmat_model_dequantize(wmat_model *m);

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
    /* 1: keep a copy of the fp32 linear weights in the GEMM library's own
     * blocked layout for the batched forward (oneDNN; 1.1-1.3x on small
     * windows). The model's weights must then not change while the runtime
     * lives (training and calibration leave it 0). Skipped, silently, when
     * the fp32 linear weights exceed 1 GiB or oneDNN is not in use. */
    int pack_weights;
} wmat_runtime_params;

WMAT_API wmat_runtime_params wmat_runtime_default_params(void);

/* A runtime holds activation buffers (one arena) and the KV cache for a model.
 * The model must be materialized and outlive the runtime. */
WMAT_API int wmat_runtime_create(wmat_runtime **out, wmat_model *m, const wmat_runtime_params *p);
WMAT_API void wmat_runtime_free(wmat_runtime *rt);
WMAT_API void wmat_runtime_set_hook(wmat_runtime *rt, wmat_linear_hook fn, void *user);
WMAT_API size_t wmat_runtime_bytes(const wmat_runtime *rt);
/* Bytes of packed weight copies (0 when pack_weights was not asked or not possible). */
WMAT_API size_t wmat_runtime_packed_bytes(const wmat_runtime *rt);
WMAT_API int wmat_runtime_max_tokens(const wmat_runtime *rt);
WMAT_API int wmat_runtime_vocab(const wmat_runtime *rt);
WMAT_API const wmat_context *wmat_runtime_context(const wmat_runtime *rt);

/* Batched forward of tokens[0..T) at positions 0..T-1 from an empty cache.
 * logits: (T, vocab) or NULL when only hooks are wanted. */
WMAT_API int wmat_forward(wmat_runtime *rt, const int32_t *tokens, int T, float *logits);
/* The same forward in three pieces, for work that goes block by block
 * (calibration, layer-wise reconstruction): embed tokens into a residual
 * stream X (T, dim); run blocks l0..l1-1 on it (hooks fire as in
 * wmat_forward); final norm and classifier (logits may be NULL: hooks only).
 * X_in may equal X_out; X_out may be NULL (only the hooks are wanted). A hook
 * that aborts leaves X_out untouched. */
WMAT_API int wmat_forward_embed(wmat_runtime *rt, const int32_t *tokens, int T, float *X);
WMAT_API int wmat_forward_layers(wmat_runtime *rt, const float *X_in, float *X_out, int T, int l0, int l1);
WMAT_API int wmat_forward_head(wmat_runtime *rt, const float *X, int T, float *logits);
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
    /* Uncertainty of ppl as llama.cpp's perplexity tool prints it ("PPL = X
     * +/- Y"): ppl * sqrt((mean(nll^2) - mean_nll^2) / (tokens_scored - 1)),
     * the standard error of the mean NLL carried to the perplexity. It
     * treats the scored tokens as independent, which they are not, so it is
     * a floor on the real spread between streams; it is what lets two
     * perplexities be called different or not. Set by both protocols. */
    double ppl_err;
} wmat_eval_result;

/* Perplexity of a token stream: windows of ctx+1 tokens overlapping by one
 * (window k = tokens k*ctx .. k*ctx+ctx), each from an empty cache, all ctx
 * predictions scored, a last partial window too. max_windows <= 0: all. */
WMAT_API int wmat_eval_tokens(wmat_runtime *rt, const int32_t *tokens, size_t n, int ctx_len,
                              int max_windows, wmat_eval_result *res);

/* Which predictions a perplexity counts. Figures under different protocols
 * are not comparable (docs/ARCHITECTURE.md, "Perplexity protocols"):
 * - WMAT_EVAL_WMAT: wmat_eval_tokens's windows above; every prediction
 *   counts, including the early ones with little context, so it reads
 *   higher than llama.cpp's on the same model and text;
 * - WMAT_EVAL_LLAMACPP: what `llama-perplexity -f` reports, so a wmat figure
 *   can be set beside one from llama.cpp: the stream is cut into n / ctx
 *   chunks of ctx tokens (no overlap; a last partial chunk is dropped; fewer
 *   than 2 x ctx tokens is an error, as there), each chunk is run from an
 *   empty cache with its first token replaced by BOS, and only the second
 *   half is scored: the predictions at positions ctx/2 .. ctx-2, of tokens
 *   ctx/2+1 .. ctx-1 (ctx - ctx/2 - 1 per chunk). */
typedef enum { WMAT_EVAL_WMAT = 0, WMAT_EVAL_LLAMACPP = 1 } wmat_eval_protocol;

typedef struct {
    wmat_eval_protocol protocol;
    int ctx;        /* window (chunk) length; <= 0: the model's seq_len (llama.cpp's -c) */
    int max_chunks; /* score only the first K windows/chunks; <= 0: all (llama.cpp's --chunks) */
    int bos;        /* llama.cpp protocol: the id written over each chunk's first token; -1: the
                       model's BOS (wmat_config.bos_id, which GGUF's tokenizer.ggml.bos_token_id
                       sets); -2: none, the chunk's own first token stays (llama.cpp does that
                       for vocabularies that add no BOS) */
    int n_threads;  /* <= 0: the context's (whole windows per thread, as wmat_eval_tokens) */
    const wmat_context *context; /* progress ("eval", windows done), GEMM choice; NULL: defaults */
    int pack_weights; /* as wmat_runtime_params (default 1: the weights do not change meanwhile) */
    /* Out of core (docs/SCALING.md): 1: layer-major, every window of a
     * group through block l (the residual streams kept, at most 256 MiB of
     * them), block l's mapped pages released, then the next block; no packed
     * weight copies. The windows compute the same floats as the window-major
     * path without packing. -1: never; 0 (default): when the model maps
     * 2 GiB of weights or more. */
    int low_mem;
} wmat_eval_params;

WMAT_API wmat_eval_params wmat_eval_default_params(void);
/* "wmat", "llama.cpp" (NULL for no protocol), and back (WMAT_ERR_INVALID). */
WMAT_API const char *wmat_eval_protocol_name(wmat_eval_protocol p);
WMAT_API int wmat_eval_protocol_from_name(const char *name, wmat_eval_protocol *out);

/* Perplexity of m (materialized) on tokens[0..n) under params (NULL:
 * defaults), on a runtime it creates and frees: res->windows is the number
 * of windows (chunks) run, res->tokens_scored the predictions counted. With
 * WMAT_EVAL_WMAT the figures equal wmat_eval_tokens's. */
WMAT_API int wmat_eval_stream(wmat_model *m, const int32_t *tokens, size_t n, const wmat_eval_params *params,
                              wmat_eval_result *res);

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

/* The sampler of llama.cpp users' flags. Steps, in order: the repetition
 * penalty over the last repeat_last_n tokens of the history (llama.cpp's
 * rule: a positive logit divided by it, a negative one multiplied; each
 * token once), then temperature (<= 0: the argmax of the penalized logits,
 * first maximum), softmax, and the candidates cut by top_k (0: off), top_p
 * (nucleus over the renormalized top-k; >= 1: off) and min_p (keep p >=
 * min_p * p_max; 0: off); the token is drawn from what is left. With
 * top_k 0, min_p 0 and no penalty this is wmat_sample (run.c's order:
 * temperature before the nucleus). */
typedef struct {
    float temp;
    int top_k;
    float top_p;
    float min_p;
    float repeat_penalty; /* 1: off */
    int repeat_last_n;    /* tokens of history the penalty looks at */
} wmat_sampler_params;
/* temp 1, top_k 0, top_p 0.9, min_p 0, repeat_penalty 1, repeat_last_n 64. */
WMAT_API wmat_sampler_params wmat_sampler_default_params(void);
/* history: the tokens so far (prompt and generated), may be NULL when n_hist is 0. */
WMAT_API int wmat_sample_ex(float *logits, int n, const wmat_sampler_params *p, const int32_t *history, int n_hist,
                            wmat_rng *rng);

/* ================================================================ analysis
 * Spectra, outliers, low-rank-ness and fine-tuning fingerprints of weight
 * matrices (src/analyze, docs/ANALYSIS.md). Eigenvalues are lambda = s^2 of
 * W^T W without normalization (WeightWatcher's default). */

/* Continuous power-law fit of positive samples (WeightWatcher / Clauset):
 * for each candidate xmin, alpha = 1 + n / sum ln(x_i / xmin) over x_i >=
 * xmin; the xmin with the smallest Kolmogorov-Smirnov distance D wins. */
typedef struct {
    double alpha, xmin, xmax, D;
    int n;            /* samples used (positive values) */
    int n_tail;       /* samples >= xmin */
    int n_candidates; /* xmin candidates considered */
    int n_ks_exact;   /* candidates whose D was computed over the whole tail */
    int64_t n_evals;  /* CDF evaluations done in the xmin search (work, for benchmarks) */
} wmat_powerlaw;

/* Fit x[0..n) (any order; values <= 0 ignored). min_tail: smallest tail
 * (<= 1: 2). WMAT_ERR_INVALID if fewer than min_tail positive samples;
 * then *out has alpha = NaN. The result is the exact minimum of D; the
 * search prunes candidates with bounds instead of the O(n^2) scan
 * (docs/ANALYSIS.md). */
WMAT_API int wmat_powerlaw_fit(const double *x, int n, int min_tail, wmat_powerlaw *out);

/* All min(rows, cols) singular values of W (rows, cols) row-major, in
 * descending order, in double. exact = 0: eigenvalues of the Gram matrix
 * (dsyrk + dsyevd; values below ~1e-7 s_max lose relative accuracy);
 * exact = 1: LAPACK dgesdd. */
WMAT_API int wmat_singular_values(const float *W, int64_t rows, int64_t cols, int exact, double *s);

typedef struct {
    int exact;                 /* 1: singular values by dgesdd (default 0: Gram + dsyevd) */
    int intruder_k;            /* top singular vectors checked against the base (default 10) */
    double intruder_threshold; /* max |cos| below this marks an intruder (default 0.5) */
    int pl_min_tail;           /* smallest tail of the power-law fit (default 10) */
    int heads;                 /* attention heads: -1 auto (layers*heads <= 256), 0 off, 1 on */
    int top_channels;          /* outlier channels kept per matrix (default 5, at most 16) */
    const wmat_context *ctx;   /* threads and progress (NULL: default) */
} wmat_analyze_params;

WMAT_API wmat_analyze_params wmat_analyze_default_params(void);

#define WMAT_AN_TOP 16
#define WMAT_AN_INTRUDER_MAX 64

/* One weight matrix. Arrays are owned by the analysis. Column names of the
 * CSV/JSON are the field names (docs/ANALYSIS.md). */
typedef struct {
    char name[WMAT_NAME_MAX];
    char role[16];   /* q k v o gate up down embed classifier other */
    int layer;       /* -1 for global matrices */
    int64_t rows, cols;
    int n_sv;        /* min(rows, cols) */
    double *sv;      /* singular values, descending (n_sv) */
    /* norms and ranks */
    double norm_fro, spectral_norm_sv; /* ||W||_F, ||W||_2 = s_max */
    double norm;                       /* WeightWatcher's "norm": ||W||_F^2 (sum of eigenvalues) */
    double lambda_max;                 /* s_max^2 */
    double spectral_norm;              /* WeightWatcher's "spectral_norm": lambda_max (= s_max^2) */
    double log_norm, log_spectral_norm;/* log10 ||W||_F^2, log10 lambda_max */
    double log_alpha_norm;             /* log10 sum lambda_i^alpha (WeightWatcher) */
    double stable_rank;                /* ||W||_F^2 / ||W||_2^2 */
    double entropy_rank;               /* effective rank: exp(-sum p ln p), p = s / sum s */
    int rank90, rank95, rank99;        /* singular values holding that share of sum s^2 */
    /* power law of the eigenvalues */
    double alpha, xmin, xmax, D, alpha_weighted;
    int num_pl_spikes;                 /* tail size of the fit */
    /* Marchenko-Pastur */
    double sigma_mp, lambda_plus, mp_softrank;
    int num_spikes;
    /* low rank (WeLore-style) */
    double lr_err10, lr_err25, lr_err50; /* relative Frobenius error of the best rank-k approximation */
    int lrc;                             /* 1: low-rank component (lr_err25 <= 0.5) */
    /* outliers: channel = column (input, IC) or row (output, OC) */
    double ic_max_ratio, oc_max_ratio;   /* max over channels of max|w| / RMS */
    double ic_kurtosis_max, oc_kurtosis_max; /* Pearson kurtosis (3 for a Gaussian) */
    double ic_kurtosis_mean, oc_kurtosis_mean;
    int n_top;
    int top_ic[WMAT_AN_TOP], top_oc[WMAT_AN_TOP];
    double top_ic_ratio[WMAT_AN_TOP], top_oc_ratio[WMAT_AN_TOP];
    double *ic_ratio, *oc_ratio;         /* per channel max|w| / RMS (cols, rows) */
    double rtn4_err_per_oc;              /* 4-bit symmetric RTN, one scale per row: ||W-Q||_F / ||W||_F */
    double rtn4_err_per_ic;              /* one scale per column */
    /* against the base (has_base) */
    int has_base;
    double delta_rel;                    /* ||W - B||_F / ||B||_F */
    double delta_stable_rank, delta_entropy_rank;
    double *delta_sv;                    /* singular values of W - B (n_sv) */
    double subspace_overlap;             /* ||U_k^T U'_k||_F^2 / k (left vectors, k = intruder_k) */
    int intruder_k, num_intruders;
    double intruder_cos[WMAT_AN_INTRUDER_MAX]; /* max |cos| of u_i to every base left vector, i < k */
    double seconds;
    char kind[16];                       /* weight kind as stored ("f32", "q4_0", "qpacked", ...): other
                                            kinds than f32 are analysed as their dequantized matrix */
} wmat_matrix_stats;

/* One attention head: SVD of its OV circuit W_O[:, h] W_V[kvh] and of its
 * QK circuit W_Q[h]^T W_K[kvh] (both dim x dim of rank <= head_dim). */
typedef struct {
    int layer, head, kv_head;
    int n_sv;                   /* head_dim */
    double *ov_sv, *qk_sv;
    double ov_norm_fro, qk_norm_fro, ov_stable_rank, qk_stable_rank, ov_entropy_rank, qk_entropy_rank;
} wmat_head_stats;

typedef enum { WMAT_COMP_Q = 0, WMAT_COMP_K = 1, WMAT_COMP_V = 2, WMAT_COMP_COUNT } wmat_comp_kind;

/* Composition of head A (earlier layer) into head B (later layer):
 * ||W_B W_OV^A||_F / (||W_B||_F ||W_OV^A||_F), W_B = W_QK^B^T (Q), W_QK^B (K)
 * or W_OV^B (V) (Elhage et al. 2021). */
typedef struct {
    wmat_comp_kind kind;
    int src_layer, src_head, dst_layer, dst_head;
    double score;
} wmat_composition;

typedef struct wmat_analysis wmat_analysis;

/* Analyze every 2-D tensor of m (materialized first if needed). base: NULL
 * or a model with the same tensors and shapes (compared by name). */
WMAT_API int wmat_analyze_model(wmat_analysis **out, wmat_model *m, wmat_model *base,
                                const wmat_analyze_params *p);
/* Analyze a set of 2-D tensors (no heads); base may be NULL or hold n
 * tensors of the same shapes. n = 0 fails with WMAT_ERR_INVALID. */
WMAT_API int wmat_analyze_tensors(wmat_analysis **out, const wmat_tensor *const *w,
                                  const wmat_tensor *const *base, int n,
                                  const wmat_analyze_params *p);
WMAT_API void wmat_analysis_free(wmat_analysis *a);

/* Propagation tightness of interval bounds (Mao et al., ICLR 2024): for a
 * linear chain M = W[L-1] ... W[0] and an input box of radius 1, per output
 * i, tau_i = (|M| 1)_i / (|W[L-1]| ... |W[0]| 1)_i in (0, 1]; 1 means
 * interval bound propagation is exact. W[i] is dims[i+1] x dims[i] fp32
 * row-major; mean, min and max over the outputs (any may be NULL).
 * docs/EXPERIMENTS.md. */
WMAT_API int wmat_ibp_tightness(const float *const *W, const int64_t *dims, int L, double *mean, double *min,
                                double *max);

/* Tightness per block of a LLaMA-style model, RMS normalisation at rms 1
 * with its weights g kept: the attention value path O V diag(g) (GQA rows
 * repeated), the FFN path D U diag(g) (gate as identity), the block's
 * residual map (I + F)(I + A), and blocks 0..layer chained; *_init is the
 * prediction for iid Gaussian weights of those shapes, sqrt(pi / (2 k)) with
 * k the inner width. Weights of any kind are read dequantized. */
typedef struct {
    int layer;
    double attn, attn_min, ffn, ffn_min;
    double block, stack;
    double attn_init, ffn_init;
} wmat_ibp_block;
/* out: room for n_out >= n_layers blocks. */
WMAT_API int wmat_ibp_model(wmat_model *m, wmat_ibp_block *out, int n_out);

WMAT_API int wmat_analysis_n_matrices(const wmat_analysis *a);
WMAT_API const wmat_matrix_stats *wmat_analysis_matrix(const wmat_analysis *a, int i);
WMAT_API int wmat_analysis_n_heads(const wmat_analysis *a);
WMAT_API const wmat_head_stats *wmat_analysis_head(const wmat_analysis *a, int i);
/* Composition scores sorted by score, strongest first, all kinds mixed. */
WMAT_API int wmat_analysis_n_compositions(const wmat_analysis *a);
WMAT_API const wmat_composition *wmat_analysis_composition(const wmat_analysis *a, int i);
WMAT_API double wmat_analysis_seconds(const wmat_analysis *a);

/* Writers: a path is written atomically; the summary goes to a FILE*. */
WMAT_API int wmat_analysis_write_csv(const wmat_analysis *a, const char *path);
WMAT_API int wmat_analysis_write_json(const wmat_analysis *a, const char *path);
WMAT_API int wmat_analysis_write_html(const wmat_analysis *a, const char *path, const char *title);
WMAT_API int wmat_analysis_write_summary(const wmat_analysis *a, FILE *out, int max_rows);

/* ================================================================ end analysis */

/* ---------------------------------------------------------------- quantized storage */
/* Packed quantized weights (docs/FORMATS.md). A model tensor of dtype
 * WMAT_QPACKED holds 2..8-bit codes packed per row, fp16 scales, u8 zero
 * points (asymmetric schemes) and an optional act-order permutation; its
 * `data` is a wmat_qtensor owned by the model and `nbytes` the packed size.
 * The runtime multiplies by it directly (dequantizing on the fly); models
 * with packed tensors are built with the methods (wmat quantize) and saved
 * with wmat_quant_model_save. wmat_model_load reads the native directory. */

typedef struct wmat_qtensor wmat_qtensor;

/* Scheme and sizes of one packed tensor. */
typedef struct {
    int bits;      /* 2..8 */
    int sym;       /* 1 symmetric (zero 2^(bits-1)), 0 with stored zero points */
    int axis;      /* 0: groups along inputs (per-OC / grouped), 1: along outputs (per-IC) */
    int group;     /* group length along axis */
    int has_perm;  /* act-order permutation stored */
    int64_t rows, cols;
    uint64_t code_bytes, scale_bytes, zero_bytes, perm_bytes;
    double bits_per_weight; /* 8 * (all four) / (rows * cols) */
} wmat_qinfo;

/* Fill *out for a WMAT_QPACKED tensor; WMAT_ERR_INVALID for any other. */
WMAT_API int wmat_tensor_qinfo(const wmat_tensor *t, wmat_qinfo *out);

/* Size report of a whole model. */
typedef struct {
    int n_packed;                  /* tensors stored packed */
    uint64_t packed_weights;       /* weights in those tensors */
    uint64_t packed_bytes;         /* their codes + scales + zeros + perms */
    uint64_t other_weights;        /* every other tensor */
    uint64_t other_bytes;          /* ... as stored now */
    double packed_bits_per_weight; /* 8 * packed_bytes / packed_weights (0 if none) */
    double model_bits_per_weight;  /* 8 * all bytes / all weights */
} wmat_quant_size;

WMAT_API void wmat_model_quant_size(const wmat_model *m, wmat_quant_size *out);

/* Any-size loading (weights stored as stacks of blocks, e.g. BitStack):
 * run, of every stacked weight, the blocks of the longest prefix of the
 * model's stored block order whose bytes fit the budget, given in bytes
 * (bits_per_weight <= 0) or in bits per weight over the stacked weights
 * (bytes <= 0). Each weight keeps at least its first block: a budget below
 * that is WMAT_ERR_INVALID naming the least one; a model without stacked
 * weights WMAT_ERR_UNSUPPORTED. *bytes_used (may be NULL): the stacked
 * weights' bytes now. Nothing is freed: a later call may raise the size. */
WMAT_API int wmat_model_set_budget(wmat_model *m, double bytes, double bits_per_weight, double *bytes_used);

/* Save a model holding packed tensors (the others must be materialized f32).
 *   WMAT_FMT_QUANT: the native directory `path` (config.json,
 *     quant_config.json, model.safetensors, tokenizer.bin), loadable by
 *     wmat_model_load and run without dequantizing;
 *   WMAT_FMT_GGUF: a GGUF file; packed tensors must fit a ggml type exactly
 *     (symmetric 4-bit groups of 32 along inputs -> Q4_0, symmetric 8-bit
 *     groups of 32 -> Q8_0, no permutation or an identity one); any other
 *     scheme is WMAT_ERR_UNSUPPORTED naming the tensor and the reason.
 *     Unquantized matrices are written f32.
 * Output is atomic as for wmat_model_save. */
WMAT_API int wmat_quant_model_save(wmat_model *m, const char *path, wmat_format fmt);

/* ---------------------------------------------------------------- end quantized storage */

/* ---------------------------------------------------------------- training */
/* Training and fine-tuning (src/train, docs/TRAINING.md). A trainer owns
 * parameters, gradients and optimizer states in arenas of the same layout
 * (llm.c's habit) and allocates nothing inside a step (GaLore's SVD uses
 * LAPACK's own workspace). Results are deterministic for a seed and a
 * thread count; a checkpoint resumes to bit-identical weights.
 *
 * Optimizers, adapters and gradient projectors are registries (src/train/
 * optim.h, adapter.h): a run names them, wmat_train_registry_entry lists
 * them. */

/* FULL: every weight; LORA: an adapter over the frozen base (LoRA by
 * default, any registered adapter by name); GALORE: every weight, the
 * linear ones through a gradient projector (GaLore by default). */
typedef enum { WMAT_TRAIN_FULL = 0, WMAT_TRAIN_LORA = 1, WMAT_TRAIN_GALORE = 2 } wmat_train_method;
/* Kept for older callers; optimizer_name, when set, takes precedence. */
typedef enum { WMAT_OPT_ADAMW = 0, WMAT_OPT_SGD = 1 } wmat_optimizer_kind;

typedef struct {
    wmat_train_method method;
    wmat_optimizer_kind optimizer;
    int batch;            /* windows per micro-batch (default 8) */
    int ctx;              /* tokens per window (default min(seq_len, 128)) */
    int grad_accum;       /* micro-batches per step (default 1) */
    int steps;            /* length of the schedule (default 100) */
    float lr, min_lr;     /* peak and final learning rate (cosine); min_lr < 0: lr / 10 */
    int warmup;           /* linear warmup steps */
    float beta1, beta2, eps, weight_decay; /* AdamW; decay is decoupled, 2-D weights only */
    float momentum;       /* SGD */
    float grad_clip;      /* global-norm clipping, <= 0: off */
    uint64_t seed;
    int shuffle;          /* 1: windows in a seeded random order per epoch */
    /* Adapter (LoRA: W + s B A, s = alpha / r, alpha / sqrt(r) for rsLoRA) */
    int lora_rank;           /* adapter rank */
    float lora_alpha;
    int lora_rslora;         /* adapter lora (or NULL) becomes rslora */
    unsigned lora_targets;   /* bits (1u << wmat_linear_kind) */
    /* Projector (GaLore) */
    int galore_rank;         /* <= 0: dim / 4 */
    int galore_gap;          /* projector update every T steps */
    float galore_scale;
    unsigned galore_targets; /* bits (1u << wmat_linear_kind) */
    int galore_randomized;   /* 1: randomized range finder instead of a full SVD */
    const wmat_context *exec; /* threads (NULL: default); its comm, with N > 1 ranks: data-parallel
                                 training (docs/SCALING.md): batch is the global micro-batch, each
                                 rank runs batch / N of its windows (batch % N == 0), the trainable
                                 parameters' gradients are summed over the ranks (in one bucket per
                                 layer, overlapped with the backward), every rank applies the same
                                 update; losses and tokens in the step info are global */
    /* Registry names (NULL: from the fields above). A name not in its
     * registry is WMAT_ERR_INVALID listing the registered ones. Setting
     * adapter selects WMAT_TRAIN_LORA, projector WMAT_TRAIN_GALORE. */
    const char *optimizer_name; /* "adamw", "sgd", ... (NULL: from optimizer) */
    const char *adapter;        /* "lora", "rslora", ... */
    const char *projector;      /* "galore", ... */
    /* Adapters with a sparse part (sltrain: W = (alpha/r) B A + S, rank
     * lora_rank, alpha lora_alpha): the share of each targeted matrix's
     * positions in S's fixed random support, [0, 1) (default 0.03). */
    float adapter_density;
    /* Adapters with an L1 penalty on per-layer coefficients (s2lora: mu of
     * mu sum ||lambda||_1, applied as soft-thresholding by lr * mu after
     * every step), >= 0 (default 0: none). */
    float adapter_l1;
    /* AdaLoRA (adapter "adalora", initial rank lora_rank): the final
     * average rank (0: round(2 lora_rank / 3), PEFT's 12 -> 8), the steps
     * at the initial budget (< 0: steps / 10) and at the final one (< 0:
     * steps / 5), steps between budget allocations (<= 0: 1), and the
     * weight of the orthogonality penalty (< 0: PEFT's 0.5). */
    int adalora_target_r, adalora_tinit, adalora_tfinal, adalora_deltat;
    float adalora_orth;
    /* 1: activation recomputation per block: the forward keeps only each
     * block's input, the backward recomputes a block's activations from it
     * (one more block forward per layer but the last; the same gradients,
     * bit for bit, with one layer's activations in memory instead of all). */
    int recompute;
    /* Data parallelism in a fixed order (docs/SCALING.md): > 0: the global
     * micro-batch is this many shards (a power of two, a multiple of the
     * rank count, dividing batch), each shard's gradient accumulated apart
     * and the shards summed as a binary tree, within a rank and then over
     * the ranks (recursive doubling instead of MPI's sum and the per-layer
     * buckets): the same bits under every rank count that divides it, one
     * process included (which then keeps dp_shards gradient copies).
     * 0: one shard per rank, MPI's sum (fastest; within ~1e-6 of one process). */
    int dp_shards;
    /* Precision of the linear layers' GEMMs (docs/TRAINING.md "bf16 mixed
     * precision"): WMAT_F32 (default) or WMAT_BF16: the forward, input
     * gradient and weight gradient GEMMs of the linear layers and the
     * classifier take bf16 operands (each trainable weight rounded into a
     * bf16 copy once per optimizer step, a frozen f32 base once; each
     * activation and output gradient when it enters its GEMMs) and
     * accumulate in fp32; master weights, gradients, optimizer states,
     * norms, attention, softmax, loss and every reduction stay fp32. An
     * adapter's own products and a frozen base of another kind (q4_0 ...)
     * run as in fp32. Needs a native bf16 GEMM (oneDNN on a CPU with
     * AVX512-BF16 or AMX): elsewhere WMAT_ERR_UNSUPPORTED (no silent
     * fallback: widened bf16 would be slower than fp32). */
    wmat_dtype precision;
    /* Adapters that plan their layers from data (eva): calibration tokens
     * (borrowed, read during wmat_trainer_create only; NULL: such an
     * adapter is refused), windows of ctx tokens in order from the start,
     * batches of `batch` windows, at most adapter_calib_batches batches
     * (default 32); EVA's rho (components per input = round(rank * rho),
     * default 2) and tau (a component has converged when its cosine with
     * the previous batch's is >= tau, default 0.99). */
    const int32_t *adapter_calib;
    size_t adapter_calib_n;
    int adapter_calib_batches;
    float eva_rho, eva_tau;
    /* Quantization-aware training (adapters ofq, ofq-statsq, ofq-lsq: the
     * targeted linears trained through fake-quantized weights, written as
     * packed quantized weights): bits 2..8 (default 4), group along inputs
     * (0, default: one step per output channel; else a multiple of 32), the
     * optimizer steps of the annealing stage at the end of the schedule
     * (< 0, default: steps / 5) and the boundary range of its rule (levels,
     * default 0.005). */
    int qat_bits, qat_group, qat_cga_steps;
    float qat_cga_range;
    /* SPT (adapter "spt", calibrating on adapter_calib): the budget of
     * trained floats over the targeted matrices (<= 0, default: LoRA's at
     * lora_rank on them, lora_rank (in + out) each) and the threshold of
     * structured tuning: a matrix whose selected positions number at least
     * spt_threshold x (in + out) gets a LoRA of the rank those positions pay
     * for, the others train their positions as a sparse update (default 1). */
    double spt_budget;
    float spt_threshold;
} wmat_train_params;

WMAT_API wmat_train_params wmat_train_default_params(void);
/* Parse "q,k,v,o,gate,up,down" (or "all") into a target mask; an unknown
 * name is WMAT_ERR_INVALID naming it. */
WMAT_API int wmat_train_parse_targets(const char *list, unsigned *mask);

/* 1 when the named adapter replaces the linear weights it targets instead
 * of adding to a frozen base (sltrain: the layers are trained from scratch
 * in their small form, the rest of the model trains as in full training,
 * and the trained model keeps the small form), 2 when it trains the
 * low-rank factors a decomposition left in the base (factors: the rest
 * frozen, the trained model keeps the base's kinds), 3 when it is not a
 * weight delta but adds to a base (compacter: a nonlinear path on the
 * layer's output), 4 when it is not a weight delta and replaces the linears
 * it targets, trained from scratch as with 1 (memoryformer: hashed tables;
 * it fits a new model); with 3 and 4 there is no merged model or PEFT file,
 * the trained adapter lives in a training checkpoint. 0 when it adds to a
 * base, WMAT_ERR_INVALID for a name not in the registry. */
WMAT_API int wmat_train_adapter_replaces_base(const char *name);

/* The registries of the trainer. */
typedef enum { WMAT_REG_OPTIMIZER = 0, WMAT_REG_ADAPTER = 1, WMAT_REG_PROJECTOR = 2 } wmat_train_registry;
/* Entry i of a registry (name and a one-line summary, static strings);
 * WMAT_ERR_INVALID past the last one. */
WMAT_API int wmat_train_registry_entry(wmat_train_registry which, int i, const char **name, const char **summary);

typedef struct wmat_trainer wmat_trainer;

/* A trainer for model m (materialized: wmat_model_load with materialize_f32,
 * with or without keep_stored; it must outlive the trainer). Weights may be
 * of any registered kind (f32, f16, bf16, q8_0, q4_0, packed, low-rank):
 * full / galore: the weights are copied into the trainer's f32 parameter
 * arena, dequantized;
 * lora (any adapter): m is the frozen base, read in place in its stored
 * kind: the forward and the input gradient go through the kind's own
 * products, so a q4_0 base stays q4_0-sized in memory;
 * an adapter that replaces the base (sltrain): the targeted linears of m
 * are not read (they are trained from scratch in the adapter's form), the
 * rest is copied into f32 parameters and trained as in full training. */
WMAT_API int wmat_trainer_create(wmat_trainer **out, wmat_model *m, const wmat_train_params *p);
WMAT_API void wmat_trainer_free(wmat_trainer *t);
/* Training tokens (borrowed; must outlive the trainer's use). Fails with a
 * clear message when shorter than one window of ctx + 1 tokens. */
WMAT_API int wmat_trainer_set_data(wmat_trainer *t, const int32_t *tokens, size_t n);

typedef struct {
    int step;         /* steps done after this one */
    double loss;      /* mean training loss of the step (with aux_loss) */
    double aux_loss;  /* the adapter's own term in loss (AdaLoRA's orthogonality penalty; else 0) */
    float lr;
    float grad_norm;  /* before clipping */
    double seconds;
    uint64_t tokens;  /* tokens in this step */
    double comm_seconds; /* data parallel: waiting for the gradient sums past the backward (0: one rank) */
} wmat_train_step_info;

/* One optimizer step (grad_accum micro-batches). */
WMAT_API int wmat_trainer_step(wmat_trainer *t, wmat_train_step_info *info);
WMAT_API int wmat_trainer_steps_done(const wmat_trainer *t);
/* The current weights as a model (full/galore: a view of the parameters;
 * lora: an f32 copy of the base, dequantized from its stored kinds, with
 * the adapters merged, refreshed by this call; it costs the base's f32
 * size, once; sltrain: the replaced linears as weights of their small
 * kinds, `sum` of `lowrank` + `sparse`, rebuilt by this call). Owned by the trainer; valid until the next step or until
 * the trainer is freed. It has a copy of the base model's tokenizer. */
WMAT_API int wmat_trainer_model(wmat_trainer *t, wmat_model **out);
/* wmat_eval_tokens on a runtime over the current weights (lora: over the
 * merged f32 copy of wmat_trainer_model). */
WMAT_API int wmat_trainer_eval(wmat_trainer *t, const int32_t *tokens, size_t n, int ctx, int max_windows,
                               wmat_eval_result *res);
/* Checkpoint: weights being trained, optimizer state (GaLore projectors
 * included), step, RNG and data position, as one safetensors file
 * (atomic). Loading checks that it belongs to this model and method. */
WMAT_API int wmat_trainer_save_checkpoint(wmat_trainer *t, const char *path);
WMAT_API int wmat_trainer_load_checkpoint(wmat_trainer *t, const char *path);

typedef struct {
    size_t weights;       /* all weights the forward reads */
    size_t grads;
    size_t optim;         /* optimizer states, bytes (projector states included) */
    size_t optim_scratch; /* projector (GaLore SVD / projection) scratch */
    size_t activations;
    size_t peak_rss;      /* VmHWM of this process */
    int64_t trainable;    /* trainable parameters */
    size_t galore_state;  /* states of projected matrices (projector + optimizer) */
    size_t galore_adam_equiv; /* what the optimizer would keep for them unprojected */
    size_t bf16;          /* precision bf16: the weights' bf16 copies and the activations' bf16 copies */
} wmat_train_memory;
WMAT_API void wmat_trainer_memory(const wmat_trainer *t, wmat_train_memory *mem);
/* VmHWM from /proc/self/status in bytes (0 if unavailable). */
WMAT_API size_t wmat_peak_rss(void);

/* Write the trained adapter in PEFT's layout (dir/adapter_config.json and
 * dir/adapter_model.safetensors, q/k output rows in HF's rotary order). */
WMAT_API int wmat_trainer_save_lora(wmat_trainer *t, const char *dir);
/* Merge a PEFT adapter directory (any registered adapter that reads its
 * config; LoRA: W += s B A) into m in place. */
WMAT_API int wmat_lora_merge_peft(wmat_model *m, const char *dir);
/* What the adapter decided from data when the trainer was created (eva:
 * calibration, convergence and the rank of every matrix), lines of text;
 * "" for adapters that decide nothing. An adapter with a running status
 * (ofq*: oscillation counts, the annealing stage's frozen weights) appends
 * it, as of the steps done, rewritten by each call (valid until the next). */
WMAT_API const char *wmat_trainer_adapter_report(const wmat_trainer *t);
/* The adapter rank of linear kind (wmat_linear_kind) of layer; 0 where
 * the layer is not adapted (not targeted, or eva gave it rank 0). */
WMAT_API int wmat_trainer_adapter_rank(const wmat_trainer *t, int layer, int kind);

/* Random init for pretraining: N(0, std) for matrices, residual
 * projections (o, down) scaled by 1/sqrt(2 L), norms 1; a Gaussian-mixture
 * attention mask (gmm_kernels) as its paper does (sigma ~ N(10, 10^2),
 * alpha ~ N(0, 2^2)) from a stream of its own, so the other weights equal
 * those of the same seed without the mask. */
WMAT_API int wmat_model_init_random(wmat_model *m, uint64_t seed, float std);
/* A config from a preset name ("tiny", "small", "mix4m") or a JSON file in
 * HF's config.json keys; vocab_size <= 0 in the file keeps cfg's. */
WMAT_API int wmat_train_config(const char *name_or_path, wmat_config *cfg);
/* dL/dW of the LM loss for every linear weight (and the classifier; the
 * embedding's gradient, both uses summed, when tied) with the weights frozen:
 * the trainer's forward and backward on min(n_seq, (n-1)/ctx) windows of
 * ctx tokens from the start of tokens (targets shifted by one), the loss the
 * mean over all their predictions, no step taken. *grads: one array per
 * tensor of m in wmat_model_tensor order (rows x cols), NULL where none;
 * *loss (may be NULL) the batch's mean loss. m as for wmat_trainer_create.
 * Free with wmat_model_weight_gradients_free. */
WMAT_API int wmat_model_weight_gradients(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq,
                                         int n_threads, float ***grads, double *loss);
/* The same windows one at a time: the mean over them of each window's
 * squared dL/dW (the empirical Fisher's diagonal), same layout; *loss the
 * mean of the windows' losses. */
WMAT_API int wmat_model_weight_fisher(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq,
                                      int n_threads, float ***grads, double *loss);
WMAT_API void wmat_model_weight_gradients_free(const wmat_model *m, float **grads);
/* A byte-level llama2.c-style tokenizer: <unk>, <s>, </s>, then 256 byte
 * pieces (printable ASCII as themselves, others "<0xXX>"): 259 ids. */
WMAT_API int wmat_tokenizer_bytes(wmat_tokenizer **out);
/* A copy of a tokenizer. */
WMAT_API int wmat_tokenizer_clone(const wmat_tokenizer *t, wmat_tokenizer **out);
/* ---------------------------------------------------------------- end training */

/* ---------------------------------------------------------------- method registry */
/* Every registered method of every family, from the registries the drivers
 * read: family "quantization" (wmat_quantize_model, wmat quantize) and
 * "decomposition" (wmat_decompose_model, wmat decompose). Each has a
 * parameter schema: typed keys with defaults, ranges and help, given as
 * method_params "key=value" text or per tensor in overrides. */
enum { WMAT_NEEDS_HESSIAN = 1u << 0, WMAT_NEEDS_ACT_NORMS = 1u << 1, WMAT_NEEDS_GRADIENTS = 1u << 2,
       WMAT_NEEDS_RESIDUAL = 1u << 3 /* covariance of the residual stream between blocks (SliceGPT) */ };

typedef struct {
    const char *name, *family, *summary;
    const char *produces; /* the weight kind of its result: "qpacked", "lowrank" */
    unsigned needs;       /* WMAT_NEEDS_*: statistics of the layer inputs; 0: data-free */
    int n_keys;           /* keys of its schema (wmat_method_key_info) */
} wmat_method_about;

typedef struct {
    const char *key;      /* "act_order" (the CLI's flag: --act-order) */
    const char *type;     /* "int", "float", "bool", "enum" or "string" */
    const char *help;
    const char *negation; /* a bool's flag that sets it false ("asym" for sym), or NULL */
    char def[64];         /* the default, as text */
    char range[128];      /* what is allowed: "2..8", "true|false", "stage|block|off" */
} wmat_method_key;

/* Methods over all families; quantization first, each family in its
 * registry's order (the first of a family is its default). Strings are static. */
WMAT_API int wmat_method_count(void);
WMAT_API int wmat_method_info(int i, wmat_method_about *out);
WMAT_API int wmat_method_key_info(int i, int k, wmat_method_key *out);
/* ---------------------------------------------------------------- end method registry */

/* ---------------------------------------------------------------- experiments */
/* Measured studies of the papers' claims (docs/EXPERIMENTS.md), listed by
 * wmat_method_info as the family "experiment" (their keys by
 * wmat_method_key_info). Each fills a table of numbers: rows, each with a
 * series label, and named columns; a chart plots column y_col against x_col
 * with one line per series. */
typedef struct {
    char *title;          /* one line */
    char *note;           /* the claim under test and how to read the table; may be NULL */
    int ncols, nrows;
    char **cols;          /* ncols column names */
    char **series;        /* nrows labels */
    double *v;            /* nrows x ncols, row-major; NaN: not measured */
    int x_col, y_col;     /* the chart's columns; -1: no chart */
    int log_x, log_y;
    int cap;              /* rows allocated (internal) */
} wmat_table;

typedef struct {
    const char *params;   /* "key=value;..." of the experiment's keys (";" between items, so values
                             may hold commas: "widths=16,64"); NULL: defaults */
    uint64_t seed;        /* 0: the experiment's default (1) */
    const wmat_context *ctx; /* threads and progress; NULL: defaults */
} wmat_experiment_params;

/* Run experiment `name` into *out (zeroed first; free with wmat_table_free,
 * also after a failure). */
WMAT_API int wmat_experiment_run(const char *name, const wmat_experiment_params *p, wmat_table *out);
WMAT_API void wmat_table_free(wmat_table *t);

/* ---------------------------------------------------------------- quantization methods */
/* Post-training weight quantization (docs/QUANT.md): RTN, imatrix-weighted
 * RTN, GPTQ and AdaDim over every linear layer, with calibration through the
 * runtime's observation hook. wmat_quantize_model writes the dequantized
 * ("fake-quant") weights into the model in place, so wmat_eval_tokens on it
 * measures the quantized model; packing for storage goes through the
 * quantized-storage section (the CLI: wmat quantize). */

typedef struct {
    const char *method;   /* a registered method (wmat_quantize_method_name); default the first */
    int bits;             /* 2..8 */
    int sym;              /* 1 symmetric, 0 asymmetric (zero point) */
    int group;            /* group length; 0: the whole axis (per-OC, or per-IC with per_ic) */
    int per_ic;           /* groups along outputs (one scale per input channel) */
    int act_order;        /* GPTQ: columns by decreasing H_jj */
    int static_groups;    /* GPTQ: group scales from the original W */
    int clip;             /* RTN/GPTQ grids: search shrink factors of the range */
    float damp;           /* GPTQ: lambda (0.01), raised automatically if Cholesky fails */
    const char *keep;     /* comma-separated name patterns left in fp32 (glob, or substring) */
    const char *overrides;/* "PATTERN=METHOD[:BITS[:GROUP]][:KEY=VALUE]...,..." GROUP a number,
                             "oc" or "ic"; KEY any key of that method (docs/QUANT.md) */
    const char *method_params; /* "key=value,..." for the methods' keys (bits, group, damp,
                             block, ...; docs/QUANT.md), applied after the fields above;
                             a key a method does not read is left to the others */
    int group_fallback;   /* 1: a tensor whose width the group does not divide is quantized
                             per-OC (reported); 0: that is an error */
    int embeddings;       /* also quantize the token embedding (data-free RTN unless tied) */
    int classifier;       /* also quantize the classifier (the embedding when tied) */
    int gguf;             /* 1: the result is for GGUF; settings no GGUF type holds exactly
                             (asymmetric, groups other than 32 inputs, act-order, 2/3 bits)
                             fail before any calibration, naming the flag that would work */
    const char *ggml;     /* llama.cpp file type ("q4_k_m", "q4_k_s", "q3_k_m", "q3_k_s",
                             "q3_k_l", "q5_k_m", "q5_k_s", "q2_k", "q4_k", "q5_k", "q6_k"):
                             each tensor gets the ggml block type llama.cpp's rules choose
                             for it (token embedding and classifier too), and the method
                             chooses the values inside those blocks: rtn llama.cpp's
                             reference search, imatrix its importance-weighted search,
                             gptq error feedback into the blocks (docs/QUANT.md, "GGUF
                             K-quants"). NULL: wmat's own grids. */
    int sequential;       /* 2 (default): per stage of a block (q/k/v, o, gate/up, down),
                             GPTQ's "true sequential"; 1: per block (block l calibrated
                             with blocks < l quantized; ~15% faster on mix4m); 0:
                             statistics of the fp32 model */
    const int32_t *calib; /* calibration tokens (windows of calib_ctx), may be NULL for rtn */
    size_t n_calib;
    int calib_ctx;        /* window length; <= 0: min(seq_len, 256) */
    int n_threads;        /* <= 0: all cores */
    wmat_progress_fn progress; /* called per tensor ("q" name) and per calibration pass */
    void *progress_user;
    /* Data-parallel calibration (NULL: one process): each rank embeds and
     * runs its contiguous share of the calibration windows, the statistics
     * are summed over the ranks where they are final, and every rank then
     * quantizes every matrix as one process would (same result on each;
     * the caller writes it from rank 0). Every rank passes the same
     * model, tokens and settings. */
    const wmat_comm *comm;
    /* Out of core (docs/SCALING.md): 1: each block's quantized weights are
     * packed as soon as the calibration streams have passed the block (its
     * fp32 copy freed, its mapped pages released), so the model ends packed
     * (wmat_model_set_quantized) rather than holding fake-quant fp32
     * weights, and the results handed back hold only what could not be
     * packed (the token embedding); -1: never; 0 (default): when the model
     * maps 2 GiB of weights or more. The codes are the same either way.
     * Out of core, each packed weight is also moved at once into a
     * temporary file in spill_dir (NULL: $TMPDIR, else /tmp; unlinked when
     * made, so nothing is left behind) and mapped back read-only: the
     * packed model is never resident whole, and a writer streams it from
     * the page cache. Put spill_dir on the output's file system. */
    int low_mem;
    const char *spill_dir;
    /* The calibration forward's linear products (docs/QUANT.md, "GPTQ at
     * 1.1B scale"): WMAT_F32 (default) or WMAT_BF16: each block's weights
     * and each product's input rounded to bf16, accumulated in fp32
     * (oneDNN's matmul); norms, attention and the statistics (x x^T of the
     * fp32 activations, summed in double) stay as in fp32. Needs a native
     * bf16 GEMM (AVX512-BF16 or AMX): elsewhere WMAT_ERR_UNSUPPORTED; any
     * other dtype WMAT_ERR_INVALID, both before any calibration. */
    wmat_dtype calib_dtype;
    /* Methods whose statistics include gradients (docs/QUANT.md "GWQ"):
     * dL/dW per tensor of the model, in wmat_model_tensor order (NULL
     * entries where none), e.g. from wmat_model_weight_gradients on the
     * fp32 model; borrowed. NULL: none (such a method then refuses the
     * settings that need them). */
    const float *const *gradients;
    /* 1: the result will be packed (a native directory): a tensor whose
     * method stores the packed kind but whose inputs are no multiple of 32
     * (packed rows are 32-code chunks) fails before any calibration, naming
     * the ways out (keep it, another method for it, or no output). */
    int pack;
} wmat_quantize_params;

WMAT_API wmat_quantize_params wmat_quantize_default_params(void);
/* The quantization methods of the registry (those wmat_quantize_model
 * takes): name i (NULL past the end) and whether it needs calibration data.
 * `wmat quantize --help` lists each one's keys. */
WMAT_API const char *wmat_quantize_method_name(int i, int *needs_calibration);
/* What p.gradients must hold for the run p describes (its method, keys and
 * override items): 0 nothing, WMAT_GRADS_MEAN dL/dW
 * (wmat_model_weight_gradients), WMAT_GRADS_FISHER the per-window mean of
 * (dL/dW)^2 (wmat_model_weight_fisher); a negative status for settings
 * wmat_quantize_model would refuse (unknown method, bad key). */
enum { WMAT_GRADS_MEAN = 1, WMAT_GRADS_FISHER = 2 };
WMAT_API int wmat_quantize_gradients_wanted(const wmat_quantize_params *p);

typedef struct {
    char name[WMAT_NAME_MAX];
    char scheme[128];       /* "gptq 4b asym per-OC", "kept (fp32)", ... */
    int64_t rows, cols;
    int quantized;
    double bits_per_weight; /* codes + fp16 scales + zero points (+ perm), as stored */
    double rel_error;       /* ||W - Q||_F / ||W||_F */
    double out_error;       /* tr(dW H dW^T) / tr(W H W^T) on the calibration data; -1 without.
                             * Tensors of more than 1024 rows: both traces over every s-th row,
                             * s = ceil(rows / 1024) (an estimate; rows are quantized apart) */
    double seconds;         /* the method's time for this tensor */
    double damp;            /* GPTQ: lambda used */
} wmat_quantize_tensor;

typedef struct {
    int n_tensors;
    wmat_quantize_tensor *tensors; /* owned; wmat_quantize_report_free */
    double bytes_before, bytes_after; /* whole model: fp32 vs quantized tensors as stored */
    double bits_per_weight;  /* over the quantized tensors */
    double seconds, calib_seconds, method_seconds;
    int block_passes;        /* calibration: windows x blocks run (the classifier head counts as one) */
    int calib_windows, calib_ctx;
    size_t stats_bytes;      /* peak bytes of calibration statistics held at once */
    size_t state_bytes;      /* the calibration windows' residual streams (windows x ctx x dim floats) */
    int state_spilled;       /* 1: those streams lived in unlinked files (out of core), not in memory */
    /* parts of calib_seconds and method_seconds: accumulating and finishing
     * the statistics (x x^T), factoring H (GPTQ's Cholesky and inverse) */
    double stats_seconds, factor_seconds;
    int64_t stage_runs;      /* calibration: windows x block stages computed (4 per whole block) */
} wmat_quantize_report;

/* Quantize m (materialized fp32) in place as fake-quant: every selected
 * tensor gets its dequantized weights. rep may be NULL. */
WMAT_API int wmat_quantize_model(wmat_model *m, const wmat_quantize_params *p, wmat_quantize_report *rep);
WMAT_API void wmat_quantize_report_free(wmat_quantize_report *rep);

/* Measured mixed precision (docs/QUANT.md, "Bit allocation"): each
 * candidate setting in `candidates` ("SPEC,SPEC,...", SPEC an --override item
 * without its pattern: METHOD[:BITS[:GROUP|oc|ic]][:KEY=VALUE]...; at most 8)
 * quantizes the whole model once with p's other settings; for every
 * quantized tensor and candidate, the calibration loss (log perplexity on
 * the first loss_windows windows of p->calib; <= 0: 32) of the fp32 model
 * with only that tensor quantized is measured; then one candidate per tensor
 * is chosen by an exact multiple-choice knapsack: least summed loss
 * increase with the stored bits within bpw over the quantized tensors.
 * *overrides_out: the choice as an override list (full tensor names, then
 * p->overrides, which win), for wmat_quantize_model; free with free().
 * m (materialized fp32) is left with its weights as they were. rep may be
 * NULL. */
typedef struct {
    char name[WMAT_NAME_MAX];
    int64_t n;                   /* elements */
    int choice;                  /* index of the chosen candidate */
    double dloss[8];             /* loss increase with this tensor alone at candidate c */
    double bits_per_weight[8];   /* as stored at candidate c */
} wmat_alloc_tensor;

typedef struct {
    int n_tensors, n_candidates;
    wmat_alloc_tensor *tensors;  /* owned; wmat_alloc_report_free */
    double loss0;                /* fp32 calibration loss */
    double predicted_dloss;      /* sum of the chosen tensors' increases */
    double bits_per_weight;      /* of the choice, over the quantized tensors */
    double seconds;
} wmat_alloc_report;

WMAT_API int wmat_quantize_allocate(wmat_model *m, const wmat_quantize_params *p, const char *candidates, double bpw,
                                    int loss_windows, char **overrides_out, wmat_alloc_report *rep);
WMAT_API void wmat_alloc_report_free(wmat_alloc_report *rep);
/* ---------------------------------------------------------------- end quantization methods */

/* ---------------------------------------------------------------- decomposition */
/* Factorization of the linear weights (src/decomp, docs/DECOMP.md): each
 * selected matrix is replaced, in place, by a weight of a structured kind
 * (truncated SVD: "lowrank", W = A B) that the runtime multiplies by
 * directly. Save the result with wmat_model_save as WMAT_FMT_QUANT (the
 * native directory stores every weight kind). */
typedef struct {
    const char *method;   /* a registered method (wmat_method_info, family "decomposition");
                             default the first */
    int rank;             /* svd: > 0: components kept per matrix */
    float energy;         /* svd: (0, 1]: else the fewest components holding this share of
                             sum s_i^2 (give one of rank and energy) */
    const char *method_params; /* "key=value,..." for the methods' keys (docs/DECOMP.md),
                             applied after the fields above */
    const char *overrides;/* "PATTERN=METHOD[:KEY=VALUE]...,...": tensors whose names match
                             PATTERN (glob or substring; the last match wins) get that method
                             and keys on top of the others; METHOD keep leaves them as they are */
    wmat_dtype dtype;     /* factors: WMAT_F32 (default), WMAT_F16 or WMAT_BF16 */
    unsigned targets;     /* bits (1u << wmat_linear_kind); 0: all seven */
    int classifier;       /* also the classifier (not when tied to the embedding) */
    const int32_t *calib; /* calibration tokens for methods that need statistics (wanda,
                             sparsegpt): windows of calib_ctx, consecutive from the start */
    size_t n_calib;
    int calib_ctx;        /* <= 0: min(seq_len, 256) */
    wmat_progress_fn progress; /* per matrix */
    void *progress_user;
} wmat_decompose_params;

WMAT_API wmat_decompose_params wmat_decompose_default_params(void);
/* Decomposition methods: name i (NULL past the end), its summary and the
 * kind it produces (wmat_method_info has the rest). */
WMAT_API const char *wmat_decompose_method_name(int i, const char **summary, const char **produces);

typedef struct {
    char name[WMAT_NAME_MAX];
    char method[32];        /* the method that ran on it */
    int64_t rows, cols, rank;
    double rel_error;       /* ||W - W'||_F / ||W||_F */
    double bits_per_weight; /* as stored after */
    double seconds;
} wmat_decompose_tensor;

typedef struct {
    int n_tensors;
    wmat_decompose_tensor *tensors; /* owned; wmat_decompose_report_free */
    uint64_t params_before, params_after; /* weights of the decomposed matrices, before and after */
    double seconds;
} wmat_decompose_report;

/* Decompose m's selected matrices (fp32: load with materialize_f32, or
 * wmat_model_dequantize a model of another kind) in place. Parameters are
 * checked before any matrix changes; a failure inside a method (out of
 * memory, no SVD convergence) leaves the matrices done so far decomposed. */
WMAT_API int wmat_decompose_model(wmat_model *m, const wmat_decompose_params *p, wmat_decompose_report *rep);
WMAT_API void wmat_decompose_report_free(wmat_decompose_report *rep);
/* ---------------------------------------------------------------- end decomposition */

#ifdef __cplusplus
}
#endif
#endif /* WMAT_H */
