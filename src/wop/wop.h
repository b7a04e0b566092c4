/* Weight operators: every linear weight of a model is an operator of a
 * registered kind with one table of functions (this file), so the runtime,
 * the trainer, analysis and the file formats handle a new storage (a packed
 * quantized type, low-rank factors, a sparse pattern, ...) without a switch
 * over types anywhere.
 *
 * A tensor's kind:
 *   - plain kinds store an array of their dtype in t->data (f32, f16, bf16,
 *     ggml q8_0 and q4_0 rows), so a mapped file runs in place;
 *   - object kinds have t->dtype == WMAT_OBJ and t->data pointing to a
 *     struct whose first member is a wmat_wobj (the kind pointer).
 * wmat__wkind_of(t) finds either. Adding a kind is one file defining a
 * `const wmat_wkind` plus one line in registry.c; tests/test_wop.c runs its
 * conformance suite over every registered kind.
 *
 * Conventions of the table:
 *   W is (rows = out, cols = in); Y (T, rows) = X (T, cols) W^T.
 *   Kernels never allocate: batched entry points get `ws` of ws_bytes(),
 *   one-row entry points get `prep` of prep_bytes() (the input prepared
 *   once, e.g. permuted or quantized to int8, shared by every thread).
 *   `rows` computes y[r] for r in [r0, r1) on the calling thread only; the
 *   caller splits rows over threads (row_align: the split's granularity).
 *   forward/backward may use up to ex->n_threads OpenMP threads.
 */
#ifndef WMAT_WOP_H
#define WMAT_WOP_H

#include "core/internal.h"

#include <cjson/cJSON.h>

/* ISA levels of hand-written kernels (the numbering of qstore.h's WMAT_QK_* levels). */
#define WMAT_ISA_REF 0
#define WMAT_ISA_AVX2 2
#define WMAT_ISA_AVX512 3

/* What a kernel may use, resolved by its caller (no process-wide setting is
 * read inside a kernel). */
typedef struct {
    int n_threads;         /* >= 1 */
    int isa;               /* WMAT_ISA_*; at most what the CPU runs */
    int act8;              /* 1: int8 activations in one-row products where a kind has them */
    wmat_gemm_backend gemm; /* fp32 GEMMs (AUTO: the process default) */
} wmat_wexec;

/* The execution settings of a context: its thread count and GEMM backend,
 * the best ISA, its int8-activation choice (-1: on unless WMAT_QACT8=0). */
wmat_wexec wmat__wexec_from(const wmat_context *ctx);

/* Sum of x[c] over the set bits of a packed bit row of n bits (kern_bits.c),
 * at the ISA level (clamped to the CPU's). */
typedef float (*wmat_bits_sum_fn)(const uint8_t *bits, const float *x, int64_t n);
wmat_bits_sum_fn wmat__bits_sum_for(int isa);

/* Batched products of a kind that dequantizes rows (tiles.c): rows r0 ..
 * r0+nr-1 of obj's matrix into out (nr, cols); the tiles go through the
 * GEMM, one per thread. ws of wmat__tiles_ws_bytes. */
typedef void (*wmat_rows_dequant)(const void *obj, int64_t r0, int64_t nr, float *out);
size_t wmat__tiles_ws_bytes(int64_t rows, int64_t cols, const wmat_wexec *ex);
void wmat__tiles_forward(wmat_rows_dequant deq, const void *obj, int64_t rows, int64_t cols, const float *X, float *Y,
                         int T, int acc, void *ws, const wmat_wexec *ex);
void wmat__tiles_backward(wmat_rows_dequant deq, const void *obj, int64_t rows, int64_t cols, const float *dY, float *dX,
                          int T, int acc, void *ws, const wmat_wexec *ex);

/* One named array of an object kind's storage (a "component"), as it is
 * written to and read from a native directory: "<tensor name><suffix>". */
typedef struct {
    const char *suffix; /* ".qcodes", ".lr_a", ... (static strings) */
    wmat_dtype dtype;   /* f32, f16, bf16, u8, i32 */
    int ndim;
    int64_t shape[2];
    const void *data;
} wmat_wpart;
#define WMAT_WPART_MAX 8

/* Finds a component of the tensor being loaded: the stored array named
 * "<name><suffix>", checked to have this dtype and shape (an error naming
 * the file otherwise). */
typedef int (*wmat_wpart_get_fn)(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1,
                                 const void **data);

typedef struct wmat_wkind wmat_wkind;
struct wmat_wkind {
    const char *name;    /* "f32", "q4_0", "qpacked", "lowrank" */
    const char *summary; /* one line for help and docs */
    wmat_dtype dtype;    /* the storage dtype of a plain kind, WMAT_OBJ for object kinds */
    int row_align;       /* rows() ranges start at multiples of this (1 if any) */

    /* ---- run */
    size_t (*ws_bytes)(const wmat_tensor *W, int T, const wmat_wexec *ex);
    /* Y (T, rows) = X (T, cols) W^T, or += when acc. */
    void (*forward)(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex);
    /* dX (T, cols) = dY (T, rows) W, or += when acc (the input gradient,
     * so a frozen weight of any kind can sit under an adapter). */
    void (*backward)(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex);
    size_t (*prep_bytes)(const wmat_tensor *W, const wmat_wexec *ex);
    void (*prepare)(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex);
    void (*rows)(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                 const wmat_wexec *ex);

    /* ---- inspect */
    /* Rows r0 .. r0+nr-1 of W as fp32 (nr, cols), in the original column order. */
    void (*dequant_rows)(const wmat_tensor *W, int64_t r0, int64_t nr, float *out);
    /* Bytes the weight takes as stored (bits per weight = 8 nbytes / (rows cols)). */
    uint64_t (*nbytes)(const wmat_tensor *W);
    /* A short description of the instance ("4b sym g32 along inputs", "rank 16 f32"). */
    void (*describe)(const wmat_tensor *W, char *buf, size_t n);

    /* A default instance approximating the fp32 matrix W (rows, cols): out
     * gets owned data (an array or an object). What the conformance suite
     * and quick conversions use; methods build richer instances themselves. */
    int (*from_f32)(const float *W, int64_t rows, int64_t cols, wmat_tensor *out);
    /* Error budget of the one-row path (prepare + rows) relative to the
     * exact product with the dequantized W (int8 activations round x). */
    float row_tol;
    float approx_tol; /* from_f32's distance ||W - W'||_F / ||W||_F on Gaussian W the suite allows (0: 0.2) */
    /* Error budget of the batched forward under ex, relative to the same
     * product; NULL: 1e-5 (fp32 GEMMs over exact tiles). Kinds whose batched
     * path may round activations (bf16 on a native bf16 GEMM) say so here. */
    float (*batch_tol)(const wmat_wexec *ex);

    /* ---- own (object kinds) */
    void (*free)(void *obj);

    /* ---- files (object kinds; NULL for plain kinds, which are arrays) */
    /* Fill desc (a JSON object, "kind" already set) with the fields load()
     * needs and parts with the arrays to store. */
    int (*save)(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what);
    /* Build the object from desc and the stored parts (data may point into
     * a mapping that outlives the object). Hostile input gets an error
     * naming `what`. */
    int (*load)(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                void **obj);
    /* GGUF: the ggml type that holds W exactly (return 1 and set *dt), or 0
     * with *why saying why none does; encode writes wmat_dtype_bytes(*dt)
     * bytes. NULL: no ggml type (plain kinds are written as their dtype). */
    int (*gguf_type)(const wmat_tensor *W, wmat_dtype *dt, const char **why);
    void (*gguf_encode)(const wmat_tensor *W, void *dst);

    /* ---- stacks (optional; NULL for kinds of one fixed size): a weight
     * stored as blocks of which the first `active` run (BitStack). stack
     * returns the number of blocks and fills, when non-NULL, the active
     * count, each block's place in the model's order (pos < 0: always
     * loaded) and its bytes; set_active runs the first n (1..blocks) and
     * updates W->nbytes. wmat_model_set_budget works over these. */
    int (*stack)(const wmat_tensor *W, int *active, int32_t *pos, uint64_t *bytes);
    int (*set_active)(wmat_tensor *W, int n);
};

/* First member of every object kind's struct. */
typedef struct {
    const wmat_wkind *kind;
} wmat_wobj;

/* The batched budget of k under ex (its batch_tol, else 1e-5). */
float wmat__wkind_batch_tol(const wmat_wkind *k, const wmat_wexec *ex);

/* ---- registry (registry.c) */
int wmat__wkind_count(void);
const wmat_wkind *wmat__wkind_at(int i);
const wmat_wkind *wmat__wkind_find(const char *name);
/* The kind of a tensor; NULL for a tensor that is no weight operator (i32, u8, or a non-2-D tensor). */
const wmat_wkind *wmat__wkind_of(const wmat_tensor *t);

/* ---- helpers over the table (wop.c): threading and buffers for callers
 * that do not manage them themselves. They allocate the workspace and return
 * a status; the runtime's hot paths use the table directly with its own
 * buffers. */
int wmat__wop_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, const wmat_wexec *ex);
int wmat__wop_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, const wmat_wexec *ex);
/* y = W x with the one-row path (prepare + rows split over ex->n_threads). */
int wmat__wop_matvec(const wmat_tensor *W, const float *x, float *y, int acc, const wmat_wexec *ex);
/* Every row of y = W x from an input already prepared into prep, split over
 * ex->n_threads threads (one when the product is small). Call outside
 * parallel regions (prepare may: a low-rank weight's B x). */
void wmat__wop_rows_all(const wmat_wkind *k, const wmat_tensor *W, const float *x, const void *prep, float *y, int acc,
                        const wmat_wexec *ex);
/* Thread t of nt's share [r0, r1) of rows, aligned to the kind's row_align. */
void wmat__wop_split(const wmat_wkind *k, int64_t rows, int t, int nt, int64_t *r0, int64_t *r1);

/* ---- constructors of object kinds */
/* A low-rank weight W = A B (A (rows, rank), B (rank, cols), fp32 in, stored
 * as dt: f32, f16 or bf16). *obj is a new object for wmat__tensor_set_obj. */
int wmat__lowrank_create(wmat_dtype dt, int64_t rows, int64_t cols, int64_t rank, const float *A, const float *B,
                         void **obj);
/* Factor i of a low-rank weight (0: A (rows, rank), 1: B (rank, cols), plain
 * dense kinds), or NULL when W is not a low-rank weight. */
const wmat_tensor *wmat__lowrank_factor(const wmat_tensor *W, int i);

/* A Monarch weight (kind_monarch.c) of in_blocks (R) input and out_blocks
 * (Q) output blocks, which must divide cols and rows, and slab rank K:
 * w1 (R, Q, K, cols/R) and w2 (Q, rows/Q, R, K), copied. */
int wmat__monarch_create(int64_t rows, int64_t cols, int64_t in_blocks, int64_t out_blocks, int64_t slab_rank,
                         const float *w1, const float *w2, void **obj);
void wmat__monarch_shape(const wmat_tensor *W, int64_t *in_blocks, int64_t *out_blocks, int64_t *slab_rank);

/* Binary-coded weights (kind_bcq.c): W[r, c] = sum_{k<q} alpha[r, c/group, k]
 * b_k[r, c], b = +-1. codes (rows, cols): bit k of a code is plane k's sign
 * (1 = +1); alpha (rows, cols/group, q), stored as fp16. q = 1..4, group a
 * multiple of 8 dividing cols, or cols. *obj is a new object for wmat__tensor_set_obj. */
extern const wmat_wkind wmat__wkind_bcq;
int wmat__bcq_create(int64_t rows, int64_t cols, int q, int group, const uint8_t *codes, const float *alpha, void **obj);
void wmat__bcq_shape(const wmat_tensor *W, int *q, int *group);
/* The value of a code: sum_k (bit k ? alpha_k : -alpha_k), in the order the kind dequantizes. */
float wmat__bcq_level(const float *alpha, int q, unsigned code);
/* The code whose level is nearest w (the lowest code on a tie). */
uint8_t wmat__bcq_nearest(float w, const float *alpha, int q);
/* a rounded to +-2^e1 +- 2^e2 +- 2^e3 (ShiftAddLLM's additive powers of two, greedy on the remainder). */
float wmat__bcq_apot(float a);
/* Fit q planes to n values w with weights wt (NULL: all 1): greedy init
 * (b_k = sign of the residual, alpha_k its weighted mean magnitude), then up
 * to `rounds` alternations of alpha by weighted least squares for the signs
 * and each code the nearest level, while the error falls. alpha (q) comes
 * back as stored (fp16; with apot, powers of two first), codes (n) the
 * nearest levels; scratch holds n bytes. Returns sum wt_i (w_i - level_i)^2. */
double wmat__bcq_fit(const float *w, const float *wt, int64_t n, int q, int rounds, int apot, float *alpha,
                     uint8_t *codes, uint8_t *scratch);
/* The kernels alone (tests, benchmarks): the 256-entry tables of x
 * (ceil(cols/8) of them, 256 floats each) and y[r0..r1) from them; isa WMAT_ISA_*. */
void wmat__bcq_lut(const wmat_tensor *W, const float *x, float *T, int isa);
void wmat__bcq_rows_lut(const wmat_tensor *W, const float *T, float *y, int64_t r0, int64_t r1, int acc, int isa);
/* The int8-table kernel alone (the one-row path under act8 on AVX-512 VBMI +
 * VNNI): prep_bytes is 0 when the shape has no int8 layout (cols or group not
 * a multiple of 32); isa WMAT_ISA_AVX512 runs the AVX-512 twin where the CPU
 * has it, anything else the C twin (the same integers and fmaf's: equal bit
 * for bit). */
size_t wmat__bcq_i8_prep_bytes(const wmat_tensor *W);
void wmat__bcq_i8_prepare(const wmat_tensor *W, const float *x, void *prep, int isa);
void wmat__bcq_i8_rows(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa);

/* A sum W = A + B (kind_sum.c) of two weights of one shape, of any kinds;
 * the sum takes over what A and B own (both are cleared). */
int wmat__sum_create(wmat_tensor *A, wmat_tensor *B, void **obj);
const wmat_tensor *wmat__sum_part(const wmat_tensor *W, int i);

/* A PB-LLM weight (kind_pbllm.c) of a (rows, cols) matrix: sal (rows x
 * cols, nonzero = salient), code (rows x cols: the 8-bit code at salient
 * positions, else the sign bit, 1 for +alpha), rowp (rows, 4): mu, alpha,
 * the salient grid's scale (each rounded to f16 here: a method that feeds
 * errors back rounds them first) and its zero point (an integer 0..255).
 * Nothing is kept from the arguments. */
int wmat__pbllm_create(int64_t rows, int64_t cols, const uint8_t *sal, const uint8_t *code, const float *rowp, void **obj);
/* The salient positions of a PB-LLM weight into mask (rows x cols, 1 =
 * salient; NULL: count only): their number, or -1 for another kind. */
int64_t wmat__pbllm_salient(const wmat_tensor *W, uint8_t *mask);

/* A DSFormer weight W = D S (kind_dsf.c): D (rows, k) dense, S (k, cols)
 * with exactly s entries per column c at idx[c s .. c s + s) (distinct, in
 * 0..k-1, any order: sorted here) with values val (same layout); D and the
 * values stored as dt (f32 or f16). Nothing is kept from the arguments. */
int wmat__dsf_create(wmat_dtype dt, int64_t rows, int64_t cols, int64_t k, int64_t s, const float *D, const int32_t *idx,
                     const float *val, void **obj);
void wmat__dsf_shape(const wmat_tensor *W, int64_t *k, int64_t *s);
/* Column c of S as stored: s increasing indices and their values. */
void wmat__dsf_column(const wmat_tensor *W, int64_t c, int32_t *idx, float *val);
const wmat_tensor *wmat__dsf_d(const wmat_tensor *W);
/* S's products alone (tests, benchmarks): Z (T, k) = X S^T; dX (T, cols)
 * = dZ S (+= with acc). ws: nt * 16 * (cols + k) floats; isa WMAT_ISA_*. */
void wmat__dsf_s_forward(const wmat_tensor *W, const float *X, float *Z, int T, float *ws, int nt, int isa);
void wmat__dsf_s_backward(const wmat_tensor *W, const float *dZ, float *dX, int T, int acc, float *ws, int nt, int isa);

/* A DGQ weight (kind_dgq.c; A8W4): codes (rows x cols, 0..15 unpacked),
 * zeros and k (rows x cols/group: 4-bit zero points, int8 group scales
 * 1..127 with every |q - z| k <= 127), s8 (rows; rounded to f16 here),
 * smooth (cols: W's columns were multiplied by it, inputs are divided; NULL:
 * none) and the activation scale (0: per token). group a multiple of 32
 * dividing cols. Nothing is kept from the arguments. */
int wmat__dgq_create(int64_t rows, int64_t cols, int64_t group, const uint8_t *codes, const uint8_t *zeros,
                     const int8_t *k, const float *s8, const float *smooth, float act_scale, void **obj);
/* The int8 weight W8 = (q - z) k of rows r0 .. r0+nr-1 (nr, cols). */
void wmat__dgq_w8_rows(const wmat_tensor *W, int64_t r0, int64_t nr, int8_t *out);
/* x (cols) as the kernels quantize it (divided by the smoothing, then by
 * the static or per-token scale, which is returned). */
float wmat__dgq_quant_act(const wmat_tensor *W, const float *x, int8_t *x8);
/* sum_c W8[r, c] x8_c by the one-row kernel at isa (xs: x8's sums per group). */
int64_t wmat__dgq_row_dot8(const wmat_tensor *W, int64_t r, const int8_t *x8, const int32_t *xs, int isa);
/* Groups with k_g >= kmin (and all groups in *n_groups); -1 for another kind. */
int64_t wmat__dgq_count_k(const wmat_tensor *W, int kmin, int64_t *n_groups);
float wmat__dgq_act_scale(const wmat_tensor *W);
/* BitStack weights (kind_bitstack.c): W ~ sum_{i < active} S_i .* (u_i v_i),
 * nb blocks of a sign matrix (packed bits, row r of block i at i*rows + r,
 * bit set = +1) and rank-k factors u (nb, rows, k), v (nb, k, cols) stored
 * as fp16 (rounded here); pos (nb) each block's place in the model's order
 * (NULL: i - 1, the level order). All blocks active. */
extern const wmat_wkind wmat__wkind_bitstack;
int wmat__bitstack_create(int64_t rows, int64_t cols, int k, int nb, const uint8_t *sign, const float *u, const float *v,
                          const int32_t *pos, void **obj);
/* The decomposition (SPECS.md G3 step 2) of W (rows, cols) with its columns
 * scaled by colscale (NULL: 1): R = W diag(s); nb times S = sign(R)
 * (sign(0) = +1), |R| = U S V^T (LAPACK), u = U_k sqrt(S_k), v = sqrt(S_k)
 * V_k^T / s (so the scale is folded into the stored block), R -= S .* (u
 * v s) with the stored (fp16) factors. */
int wmat__bitstack_decompose(const float *W, int64_t rows, int64_t cols, const float *colscale, int k, int nb, void **obj);
int wmat__bitstack_shape(const wmat_tensor *W, int *rank, int *blocks, int *active);
/* The sum of the first nblocks blocks (rows, cols), whatever is active. */
int wmat__bitstack_dequant_n(const wmat_tensor *W, int nblocks, float *out);
/* Each block's place in the order (strictly increasing from block 1 on). */
int wmat__bitstack_set_order(wmat_tensor *W, const int32_t *pos);
/* The kernels alone (tests, benchmarks): the masked sum of t over the set
 * bits, and rows r0..r1 of y from an input prepared by the kind's prepare. */
float wmat__bitstack_masked_sum(const uint8_t *bits, const float *t, int64_t n, int isa);
void wmat__bitstack_rows(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa);

/* Replace t's data by an object of kind k (t takes ownership; the old
 * owned data is freed). */
void wmat__tensor_set_obj(wmat_tensor *t, void *obj);
/* from_f32 of the plain kinds: W converted to t->dtype... of `dt`. */
int wmat__wkind_plain_from_f32(wmat_dtype dt, const float *W, int64_t rows, int64_t cols, wmat_tensor *out);
/* Fill a 2-D tensor header (name "", no flags). */
void wmat__tensor_init2(wmat_tensor *t, wmat_dtype dt, int64_t rows, int64_t cols, void *data);
/* t becomes a (rows, cols) weight owning the object obj (header, flags and
 * size from obj's kind). */
void wmat__tensor_own_obj(wmat_tensor *t, int64_t rows, int64_t cols, void *obj);
/* Free what a tensor owns (its array or its object). */
void wmat__tensor_free_data(wmat_tensor *t);

#endif
