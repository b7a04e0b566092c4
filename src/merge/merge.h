/* Model merging (src/merge, docs/MERGING.md): the method table, the
 * per-tensor kernels, the selection of magnitude thresholds, the streaming
 * driver over models of any format and the mergekit-style YAML config.
 *
 * A method is a row of wmat__merge_methods: its name (mergekit's), a
 * summary, the keys it reads (a core/params.h schema, so the CLI builds its
 * flags, help and validation from it) and a kernel that merges one tensor
 * given fp32 copies of the inputs. The driver streams: for every tensor
 * name it dequantizes that tensor of each input into a buffer, runs the
 * kernel, and hands the result to the writer before the next tensor, so
 * memory holds a few tensors per input, not models. */
#ifndef WMAT_MERGE_H
#define WMAT_MERGE_H

#include "core/params.h"

/* A numeric parameter: one value, or a list interpolated across layers as
 * mergekit does (value at layer l = piecewise-linear interpolation of the
 * list placed evenly on [0, n_layers - 1]). */
#define WMAT_MERGE_MAX_LIST 64
typedef struct {
    int n; /* 0: not given */
    double v[WMAT_MERGE_MAX_LIST];
} wmat_mvalue;

/* The value of p at layer l of L (L <= 1 or a single value: v[0]). Tensors
 * outside the blocks use the first value (embedding) or the last (final
 * norm, classifier): pass l = -1 or l = L. */
double wmat__mvalue_at(const wmat_mvalue *p, int l, int L, double def);

/* What the kernel of one tensor receives. x[i] are fp32 copies of input i
 * that the kernel may overwrite; base is NULL for methods without one. */
typedef struct {
    int64_t n;
    int n_in;
    const float *base;
    float *const *x;
    const double *weight;  /* per input */
    const double *density; /* per input, in (0, 1] */
    double lambda;         /* scale of the merged task vector */
    double t;              /* slerp */
    double dot_threshold;  /* slerp: |cos| above this interpolates linearly */
    int normalize;         /* divide by the summed weights */
    uint64_t seed;         /* DARE: already mixed with the tensor and input */
    float *scratch;        /* n floats or NULL (no method needs it today) */
    int n_threads;
    /* the tensor as a matrix (a vector: rows = n, cols = 1) and whether it is
     * a linear layer's weight (2-D, not the token embedding): OPCM projects those */
    int64_t rows, cols;
    int linear;
    double alpha;          /* opcm: share of the singular-value sum kept out of reach */
    /* Two-pass methods (row's passes = 2): the driver runs every tensor with
     * pass 0 (out is scratch, nothing is written) and then with pass 1; acc
     * (WMAT_MERGE_N_ACC doubles, zero before pass 0) carries whole-model sums
     * from the first pass to the second. */
    int pass;
    double *acc;
} wmat_merge_args;

#define WMAT_MERGE_N_ACC 72

/* What a kernel reports about one tensor. */
typedef struct {
    double trimmed;        /* share of task-vector entries set to zero (trim or drop), over inputs */
    double sign_conflicts; /* share of entries where the kept deltas disagree in sign */
    int slerp_linear;      /* slerp fell back to linear interpolation */
} wmat_merge_tinfo;

typedef int (*wmat_merge_fn)(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info);

enum { WMAT_MB_NONE = 0, WMAT_MB_REQUIRED = 1 };

typedef struct {
    const char *name;
    wmat_merge_fn fn;
    int base;               /* WMAT_MB_NONE or WMAT_MB_REQUIRED */
    int min_models, max_models; /* models besides the base */
    const wmat_param_spec *schema; /* keys the method reads */
    const char *summary;
    int passes;             /* 0 or 1: one pass; 2: a measuring pass first (wmat_merge_args.pass) */
    int ties_fused;         /* 1: the driver may run it as the one-pass TIES (ties_fused.c) instead of fn */
    int stream;             /* WMAT_MS_* flags: the driver may run it element-wise from the stored inputs
                               (wmat__merge_stream_linear) instead of fn; 0: never */
} wmat_merge_method;

/* The element-wise methods' streamed form: LIN task vectors combined as
 * combine() does (weighted sum, or with ELECT TIES's sign election and
 * disjoint mean), DROP DARE's seeded drop and rescale first. */
enum { WMAT_MS_LIN = 1, WMAT_MS_DROP = 2, WMAT_MS_ELECT = 4 };

extern const wmat_merge_method wmat__merge_methods[];
const wmat_merge_method *wmat__merge_method_find(const char *name);
/* Every key of every method (deduplicated) into dst (cap rows, NULL-ended). */
int wmat__merge_keys(wmat_param_spec *dst, int cap);
/* Keys read per input model (weight, density); the others are global. */
int wmat__merge_key_per_model(const char *key);

/* The k-th largest of |x[0..n)| (k in 1..n) by selection (a radix select:
 * three counting passes over the float bit patterns, O(n) always, x only
 * read, on n_threads threads): the magnitude threshold of TIES. */
float wmat__merge_kth_largest_abs(const float *x, int64_t n, int64_t k, int n_threads);
/* Keep the k largest magnitudes of d (exactly k: entries equal to the
 * threshold are kept in index order until k are kept), zero the rest. */
void wmat__merge_trim_topk(float *d, int64_t n, int64_t k, int n_threads);
/* DARE: zero each entry with probability 1 - density, scale the kept ones
 * by 1 / density; the mask is a function of seed alone (not of n_threads).
 * Returns the count dropped. */
int64_t wmat__merge_dare(float *d, int64_t n, double density, uint64_t seed, int n_threads);
/* The masks are drawn per chunk of WMAT_DARE_CHUNK entries from a stream
 * seeded by (seed, chunk index c): chunk c of a tensor (m entries, the last
 * may be short) dropped on its own gives the same entries as the whole. */
#define WMAT_DARE_CHUNK ((int64_t)1 << 16)
int64_t wmat__merge_dare_chunk(float *d, int64_t m, double density, uint64_t seed, int64_t c);
/* The mask seed of input i from a tensor's seed (the kernels' rule). */
uint64_t wmat__merge_dare_seed(uint64_t seed, int i);
/* The kernels' combination of task vectors a->x[i] (a->n entries) into out
 * on the calling thread: the weighted sum (elect 0) or TIES's election and
 * disjoint mean (elect 1), times lambda, plus the base; the same bits as
 * the kernels for any split of a tensor at multiples of 256 entries.
 * Returns the entries whose deltas disagree in sign. */
int64_t wmat__merge_combine_serial(const wmat_merge_args *a, float *out, int elect);

/* ---- TIES in one pass (ties_fused.c)
 *
 * The driver's TIES path: the task vectors d_i = x_i - base are formed while
 * each input is converted (with the histogram of the high 15 bits of |d_i|),
 * the exact top-k threshold of each input is found from that histogram and
 * one more read of d_i, and one pass over the untrimmed d_i then trims,
 * elects signs, takes the disjoint mean and writes the output. Same bits as
 * the `ties` kernel (tests/test_merge.c holds them equal). */
typedef struct {
    int n_in;
    const float *base;
    const float *const *d;  /* untrimmed task vectors */
    const double *w;        /* weights */
    const float *thr;       /* per input: entries with !(|d| < thr) are kept ... */
    const int64_t *cut;     /* ... up to index cut; past it those with !(|d| <= thr) */
    const int *none;        /* per input: nothing kept (k = 0) */
    double lambda;
    int normalize;
    /* optional: base and task vectors from f16 storage (AVX-512 only; d_i =
     * f16(x_i) - f16(base) formed in registers, the same float subtraction
     * as the buffers' path); when hbase is set, base and d are not read */
    const uint16_t *hbase;
    const uint16_t *const *hx;
} wmat_ties_fuse;

typedef struct {
    int64_t conflicts; /* entries whose kept deltas disagree in sign */
    double dn, bn;     /* sums of (out - base)^2 and base^2 */
    int64_t bad;       /* first non-finite output (INT64_MAX: none) */
} wmat_ties_stats;

enum { WMAT_TIES_IMPL_AUTO = 0, WMAT_TIES_IMPL_C = 1, WMAT_TIES_IMPL_AVX2 = 2 };
/* out[j0..j1) and the stats of that range (added to *st); impl C forces
 * the plain C twin, AVX2 the AVX2 one (where the CPU has it), AUTO takes
 * AVX-512, else AVX2, where the CPU has them. */
void wmat__ties_fused_range(const wmat_ties_fuse *f, float *out, int64_t j0, int64_t j1, int impl, wmat_ties_stats *st);
/* 1 when the AVX2 twin runs on this CPU. */
int wmat__ties_fused_has_simd(void);
/* 1 when the passes read f16 storage directly (AVX-512 with F16C). */
int wmat__ties_f16_direct(void);
/* x[j] -= base[j] (x becomes the task vector), and the histogram of the
 * high 15 bits of |x[j]|'s pattern (WMAT_TIES_HIST bins) added to h. */
#define WMAT_TIES_HIST 32768
void wmat__ties_delta_hist(float *x, const float *base, int64_t n, uint32_t *h);
/* Input i's trim test from its histogram (summed over threads) and one read
 * of d: thr, cut and none as in wmat_ties_fuse, for keeping exactly k of n
 * (wmat__merge_trim_topk's rule). */
int wmat__ties_threshold(const float *d, int64_t n, int64_t k, const uint32_t *hist_hi, int n_threads, float *thr,
                         int64_t *cut, int *none);

/* TIES streamed from the inputs as stored (ties_fused.c): no fp32 copy of
 * a whole tensor; chunks of TS_CHUNK entries of the base and of every model
 * are converted, made task vectors and used in cache, in four passes (high
 * histogram, low histogram in the k-th largest's bucket, the cut where the
 * threshold's value has a surplus, the fused trim / elect / mean), on
 * n_threads threads. Same bits as wmat__ties_threshold + fused_range on
 * whole fp32 task vectors. */
typedef struct {
    int n_in;              /* models besides the base (1..64) */
    int64_t n;             /* entries of the tensor */
    const void *base;      /* the base tensor's stored data */
    wmat_dtype base_dt;
    const void *const *x;  /* each model's stored data */
    const wmat_dtype *x_dt;
    const int64_t *k;      /* entries kept per model (top-k magnitudes) */
    const double *w;
    double lambda;
    int normalize;
    /* optional: the output encoded as enc_dt (wmat_from_f32, chunk by chunk
     * in cache: the same bytes as encoding the whole fp32 tensor) into enc
     * instead of fp32 into out (out may then be NULL) */
    void *enc;
    wmat_dtype enc_dt;
    int no_fused_load;     /* 1: convert every chunk into buffers even where the f16 loads
                              could be fused (the reference for tests and bench_merge) */
    int pass_a_buffers;    /* 1: pass A converts into the chunk buffers even where it could
                              read f16 storage in place (the measured alternative) */
} wmat_ties_src;

typedef struct {
    wmat_ties_stats st;    /* whole tensor; st.bad an index into out */
    float thr[64];
    int64_t cut[64];
    int none[64];
    double cpu[3];         /* CPU seconds of the calling thread: pass A (convert, task vectors, high
                              histogram); B + C (threshold); D (fused); exact with one thread */
    double wall[3];        /* the same passes' wall seconds */
    double sys[3];         /* of cpu: in the kernel (getrusage RUSAGE_THREAD) */
    long minflt[3], majflt[3]; /* the calling thread's page faults in each pass */
} wmat_ties_stream_out;

/* Whether stored data (n values of dt, nbytes long) can be streamed: a
 * type wmat_to_f32 converts in whole blocks that divide the chunk. */
int wmat__ties_stream_ok(const void *data, wmat_dtype dt, int64_t n, size_t nbytes);
int wmat__ties_stream(const wmat_ties_src *s, float *out, int n_threads, wmat_ties_stream_out *r);

/* The element-wise methods streamed from the stored inputs (stream_lin.c):
 * chunks of WMAT_DARE_CHUNK entries of the base and every model converted
 * into per-thread buffers, made task vectors, dropped (DARE, the mask of
 * that chunk), combined (wmat__merge_combine_serial) and written to out or
 * encoded into s->enc; one pass, the same bits as the kernels. s->k and
 * s->no_fused_load are not read. */
typedef struct {
    int flags;              /* WMAT_MS_* */
    const double *density;  /* per model (DROP) */
    const uint64_t *seed;   /* per model: the mask seeds (wmat__merge_dare_seed) */
} wmat_lin_how;

typedef struct {
    int64_t conflicts, dropped;
    double dn, bn;          /* sums of (out - base)^2 and base^2 */
    int64_t bad;            /* first non-finite output (INT64_MAX: none) */
    double cpu;             /* CPU seconds of the calling thread */
} wmat_lin_stream_out;

int wmat__merge_stream_linear(const wmat_ties_src *s, const wmat_lin_how *how, float *out, int n_threads,
                              wmat_lin_stream_out *r);

/* ---- OPCM (opcm.c) */

/* The OPCM kernel (continual merging by orthogonal projection, the table's
 * `opcm` row): inputs in task order. docs/MERGING.md "OPCM". */
int wmat__merge_opcm(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info);
/* One projection step on a matrix (m, n), row-major: with E = U S V^T (thin
 * SVD) and k* the first index where cumsum(S) / sum(S) > alpha (0 if none),
 * P = U^T tau V with its diagonal and its top-left k* x k* block set to 0,
 * E += U P V^T. When E is zero there is nothing to project against and
 * E += tau. *kstar receives k* (-1 for a zero E). E and tau in double;
 * tau is overwritten (workspace). */
int wmat__opcm_step(int m, int n, double *E, double *tau, double alpha, int *kstar);

/* ---- the driver */

typedef struct {
    const char *path;
    wmat_mvalue weight, density;
} wmat_merge_model;

typedef struct {
    char name[WMAT_NAME_MAX];
    int64_t nelem;
    double delta_norm;     /* ||out - base||_F (first model when no base) */
    double base_norm;
    double trimmed, sign_conflicts;
    int slerp_linear;
    double seconds;
    double read_seconds;   /* of seconds: the inputs converted (waiting for the disk included; TIES: with the task vectors) */
    double kernel_seconds; /* of seconds: the method (TIES: selection, trim, election, mean) and the checks */
    double done_share;     /* elements merged so far over all elements (for an ETA) */
} wmat_merge_tensor_report;

typedef struct {
    const char *method;
    const char *base;           /* NULL for methods without one */
    int n_models;
    const wmat_merge_model *models;
    /* global values; per-model weight/density fall back to these */
    wmat_mvalue weight, density, lambda, t;
    wmat_mvalue dot_threshold;
    wmat_mvalue alpha;          /* opcm */
    int shuffle;                /* opcm: merge the models in a random order (seed) instead of as listed */
    int normalize;              /* -1: the method's default */
    uint64_t seed;
    wmat_format out_format;     /* WMAT_FMT_UNKNOWN: by the output path (".gguf", a directory name -> hf, else llama2c) */
    wmat_dtype out_dtype;       /* weights of the output */
    const char *tokenizer_source; /* NULL or "base": the base's (else the first model's); or a model path */
    const wmat_context *ctx;    /* threads, progress ("merge <tensor>", done, total) */
    int sequential;             /* 1: no read-ahead of the next tensors and TIES in separate passes (the
                                   reference path; the output is the same bytes) */
    int no_populate;            /* 1: the read-ahead only advises (MADV_WILLNEED), it does not map the
                                   next tensor's pages ahead (MADV_POPULATE_READ); for measuring */
    int pass_a_buffers;         /* 1: TIES's pass A through the chunk buffers (wmat_ties_src); for measuring */
    int no_direct;              /* 1: the streamed paths read the inputs' mappings (page cache, read-ahead)
                                   instead of O_DIRECT reads into two reused buffers per input */
    /* called after each tensor (may be NULL) */
    void (*on_tensor)(void *user, const wmat_merge_tensor_report *r, int i, int n);
    void *user;
} wmat_merge_spec;

typedef struct {
    int n_tensors;
    wmat_merge_tensor_report *tensors; /* owned; wmat__merge_report_free */
    double seconds;
    double read_seconds, kernel_seconds; /* summed over the tensors */
    double stage_sys[3];    /* of stage_cpu: system time */
    long stage_minflt[3], stage_majflt[3]; /* page faults of the merging thread in those passes */
    int encoded_tensors;    /* GGUF output: tensors the merge wrote in the output type itself (no
                               fp32 tensor for the writer) */
    int streamed_tensors;   /* tensors merged from the stored inputs chunk by chunk (streamed TIES,
                               or the element-wise methods' wmat__merge_stream_linear) */
    int populated;          /* tensors whose input pages the read-ahead mapped ahead (MADV_POPULATE_READ) */
    uint64_t direct_bytes;  /* bytes read with O_DIRECT into the reused buffers (0: through the mappings) */
    double stage_cpu[3];    /* streamed TIES: CPU seconds of the merging thread in its passes A, B + C, D
                               (wmat_ties_stream_out.cpu), summed over the tensors; 0 on other paths */
    double fill_cpu;        /* CPU seconds of the writer's thread inside the fill hook (the merge);
                               the process's CPU time less this is the writer's and the helpers' */
    double write_seconds;   /* the writer's share of the output phase: its time outside the fill hook */
    size_t peak_rss;        /* VmHWM at the end */
    size_t largest_tensor;  /* bytes of the largest tensor as fp32 */
    uint64_t bytes_read;    /* inputs as stored */
    int order[64];          /* the models in the order merged (indices into spec.models; shuffle) */
} wmat_merge_report;

/* Check every input against the others (config, tokenizer size, tensor
 * names and shapes) and the spec against the method, then write the merge to
 * out_path (atomically; nothing is written when anything fails). */
int wmat__merge_run(const wmat_merge_spec *s, const char *out_path, wmat_merge_report *rep);
void wmat__merge_report_free(wmat_merge_report *rep);

/* ---- the YAML config (mergekit's subset) */

typedef struct {
    wmat_merge_spec spec;
    wmat_merge_model *models;
    char **strs;            /* owned copies of the spec's strings */
    int n_strs, cap_strs;
} wmat_merge_config;

/* Parse YAML text (name is used in messages). Unknown keys, a method not in
 * the table, wrong types or out-of-range values are WMAT_ERR_INVALID with a
 * message naming the key. Free with wmat__merge_config_free (also after a
 * failure). */
int wmat__merge_config_parse(wmat_merge_config *c, const char *text, size_t len, const char *name);
void wmat__merge_config_free(wmat_merge_config *c);

#endif
