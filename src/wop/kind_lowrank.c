/* Low-rank weights W = A B, A (rows, r) and B (r, cols), each a dense
 * weight of its own kind (f32, f16 or bf16), so the factors run through the
 * same kernels as any dense weight: Y = (X B^T) A^T. Produced by `wmat
 * decompose` (truncated SVD) and the factorization methods. */
#include "wop.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    wmat_wobj obj;
    wmat_tensor A, B; /* (rows, rank) and (rank, cols), plain dense kinds */
    void *own;        /* the factors' storage when built in memory (else they point into a mapping) */
} lowrank;

static const lowrank *lr_of(const wmat_tensor *W) { return (const lowrank *)W->data; }
static const wmat_wkind *kind_a(const lowrank *l) { return wmat__wkind_of(&l->A); }
static const wmat_wkind *kind_b(const lowrank *l) { return wmat__wkind_of(&l->B); }
static int64_t rank_of(const lowrank *l) { return l->A.shape[1]; }

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ws: Z (T, r), then the larger of the factors' own workspaces. */
static size_t lr_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    const lowrank *l = lr_of(W);
    const size_t a = kind_a(l)->ws_bytes(&l->A, T, ex), b = kind_b(l)->ws_bytes(&l->B, T, ex);
    return align64((size_t)T * (size_t)rank_of(l) * sizeof(float)) + (a > b ? a : b);
}

static void lr_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const lowrank *l = lr_of(W);
    float *Z = ws;
    void *inner = (char *)ws + align64((size_t)T * (size_t)rank_of(l) * sizeof(float));
    kind_b(l)->forward(&l->B, X, Z, T, 0, inner, ex);
    kind_a(l)->forward(&l->A, Z, Y, T, acc, inner, ex);
}

/* dX = dY W = (dY A) B */
static void lr_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const lowrank *l = lr_of(W);
    float *Z = ws;
    void *inner = (char *)ws + align64((size_t)T * (size_t)rank_of(l) * sizeof(float));
    kind_a(l)->backward(&l->A, dY, Z, T, 0, inner, ex);
    kind_b(l)->backward(&l->B, Z, dX, T, acc, inner, ex);
}

/* prep: z = B x (r floats), then A's preparation of z, then B's of x. */
static size_t lr_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    const lowrank *l = lr_of(W);
    return align64((size_t)rank_of(l) * sizeof(float)) + align64(kind_a(l)->prep_bytes(&l->A, ex)) +
           kind_b(l)->prep_bytes(&l->B, ex);
}

static void lr_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const lowrank *l = lr_of(W);
    const wmat_wkind *kb = kind_b(l);
    const int64_t r = rank_of(l);
    float *z = prep;
    void *pa = (char *)prep + align64((size_t)r * sizeof(float));
    void *pb = (char *)pa + align64(kind_a(l)->prep_bytes(&l->A, ex));
    kb->prepare(&l->B, x, pb, ex);
    /* z = B x is a share of the work that every row needs: computed here,
     * once, over the threads (prepare runs outside parallel regions) */
    wmat__wop_rows_all(kb, &l->B, x, pb, z, 0, ex);
    kind_a(l)->prepare(&l->A, z, pa, ex);
}

static void lr_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    const lowrank *l = lr_of(W);
    const float *z = prep;
    const void *pa = (const char *)prep + align64((size_t)rank_of(l) * sizeof(float));
    kind_a(l)->rows(&l->A, z, pa, y, r0, r1, acc, ex);
}

/* n elements of a dense factor from element offset off, as fp32. */
static void get(const wmat_tensor *t, int64_t off, int64_t n, float *dst)
{
    const size_t es = wmat_dtype_info(t->dtype)->block_bytes;
    wmat_to_f32(dst, (const char *)t->data + (size_t)off * es, t->dtype, (uint64_t)n);
}

/* out = A[r0 : r0+nr] B, in chunks of the rank and of the width (a
 * reference path that needs no allocation). */
static void lr_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const lowrank *l = lr_of(W);
    const int64_t r = rank_of(l), cols = l->B.shape[1];
    float a[256], b[1024];
    for (int64_t i = 0; i < nr; i++) {
        float *o = out + i * cols;
        memset(o, 0, (size_t)cols * sizeof(float));
        for (int64_t k0 = 0; k0 < r; k0 += 256) {
            const int64_t nk = r - k0 < 256 ? r - k0 : 256;
            get(&l->A, (r0 + i) * r + k0, nk, a);
            for (int64_t k = 0; k < nk; k++)
                for (int64_t c0 = 0; c0 < cols; c0 += 1024) {
                    const int64_t nc = cols - c0 < 1024 ? cols - c0 : 1024;
                    get(&l->B, (k0 + k) * cols + c0, nc, b);
                    for (int64_t c = 0; c < nc; c++) o[c0 + c] += a[k] * b[c];
                }
        }
    }
}

static uint64_t lr_nbytes(const wmat_tensor *W)
{
    const lowrank *l = lr_of(W);
    return (uint64_t)l->A.nbytes + (uint64_t)l->B.nbytes;
}

static void lr_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const lowrank *l = lr_of(W);
    snprintf(buf, n, "lowrank r%lld %s", (long long)rank_of(l), wmat_dtype_info(l->A.dtype)->name);
}

static void lr_free(void *obj)
{
    lowrank *l = obj;
    if (!l) return;
    wmat__free(l->own);
    wmat__free(l);
}

static int factor_type_ok(wmat_dtype dt) { return dt == WMAT_F32 || dt == WMAT_F16 || dt == WMAT_BF16; }

static void set_factor(wmat_tensor *t, const char *name, wmat_dtype dt, int64_t d0, int64_t d1, void *data)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = 2;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data;
    t->nbytes = wmat_dtype_bytes(dt, (uint64_t)(d0 * d1));
}

static lowrank *lr_new(void)
{
    extern const wmat_wkind wmat__wkind_lowrank;
    lowrank *l = wmat__calloc(1, sizeof *l);
    if (l) l->obj.kind = &wmat__wkind_lowrank;
    return l;
}

int wmat__lowrank_create(wmat_dtype dt, int64_t rows, int64_t cols, int64_t rank, const float *A, const float *B,
                         void **out)
{
    *out = NULL;
    if (!factor_type_ok(dt))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "low-rank factors are f32, f16 or bf16, not %s", wmat_dtype_info(dt)->name);
    if (rows < 1 || cols < 1 || rank < 1 || rank > (rows < cols ? rows : cols))
        return wmat_set_error(WMAT_ERR_INVALID, "low-rank: rank %lld for a (%lld x %lld) matrix", (long long)rank,
                              (long long)rows, (long long)cols);
    const size_t na = wmat_dtype_bytes(dt, (uint64_t)(rows * rank)), nb = wmat_dtype_bytes(dt, (uint64_t)(rank * cols));
    lowrank *l = lr_new();
    char *buf = wmat__aligned_alloc(align64(na) + nb);
    if (!l || !buf) {
        wmat__free(l);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "low-rank: out of memory for rank %lld factors", (long long)rank);
    }
    wmat_from_f32(buf, dt, A, (uint64_t)(rows * rank));
    wmat_from_f32(buf + align64(na), dt, B, (uint64_t)(rank * cols));
    l->own = buf;
    set_factor(&l->A, "A", dt, rows, rank, buf);
    set_factor(&l->B, "B", dt, rank, cols, buf + align64(na));
    *out = l;
    return WMAT_OK;
}

const wmat_tensor *wmat__lowrank_factor(const wmat_tensor *W, int i)
{
    extern const wmat_wkind wmat__wkind_lowrank;
    if (!W || W->dtype != WMAT_OBJ || wmat__wkind_of(W) != &wmat__wkind_lowrank) return NULL;
    return i ? &lr_of(W)->B : &lr_of(W)->A;
}

static int lr_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    (void)what;
    const lowrank *l = lr_of(W);
    if (!cJSON_AddNumberToObject(desc, "rank", (double)rank_of(l)) ||
        !cJSON_AddStringToObject(desc, "dtype", wmat_dtype_info(l->A.dtype)->name))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".lr_a", l->A.dtype, 2, {l->A.shape[0], l->A.shape[1]}, l->A.data};
    parts[1] = (wmat_wpart){".lr_b", l->B.dtype, 2, {l->B.shape[0], l->B.shape[1]}, l->B.data};
    *n_parts = 2;
    return WMAT_OK;
}

static int lr_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get_part, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    const cJSON *rk = cJSON_GetObjectItemCaseSensitive(desc, "rank");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(desc, "dtype");
    const int64_t maxr = rows < cols ? rows : cols;
    if (!cJSON_IsNumber(rk) || !(rk->valuedouble >= 1 && rk->valuedouble <= (double)maxr) ||
        rk->valuedouble != (double)(int64_t)rk->valuedouble)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"rank\" must be an integer in 1..%lld", what, (long long)maxr);
    const int d = cJSON_IsString(dt) ? wmat_dtype_from_name(dt->valuestring) : -1;
    if (d < 0 || !factor_type_ok((wmat_dtype)d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"dtype\" must be \"f32\", \"f16\" or \"bf16\"", what);
    const int64_t r = (int64_t)rk->valuedouble;
    const void *a, *b;
    int rc = get_part(user, ".lr_a", (wmat_dtype)d, 2, rows, r, &a);
    if (!rc) rc = get_part(user, ".lr_b", (wmat_dtype)d, 2, r, cols, &b);
    if (rc) return rc;
    const size_t es = wmat_dtype_info((wmat_dtype)d)->block_bytes;
    if ((uintptr_t)a % es || (uintptr_t)b % es)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: factors are not aligned to their element size", what);
    lowrank *l = lr_new();
    if (!l) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    set_factor(&l->A, "A", (wmat_dtype)d, rows, r, (void *)a);
    set_factor(&l->B, "B", (wmat_dtype)d, r, cols, (void *)b);
    *obj = l;
    return WMAT_OK;
}

/* The exact factorization of full rank: W = W I (rows >= cols) or I W. */
static int lr_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int64_t r = rows < cols ? rows : cols;
    float *I = wmat__calloc((size_t)(r * r), sizeof(float));
    if (!I) return wmat_set_error(WMAT_ERR_NOMEM, "low-rank: out of memory");
    for (int64_t i = 0; i < r; i++) I[i * r + i] = 1.0f;
    void *obj = NULL;
    int rc = rows >= cols ? wmat__lowrank_create(WMAT_F32, rows, cols, r, W, I, &obj)
                          : wmat__lowrank_create(WMAT_F32, rows, cols, r, I, W, &obj);
    wmat__free(I);
    if (rc) return rc;
    wmat__tensor_own_obj(out, rows, cols, obj);
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_lowrank = {
    .name = "lowrank",
    .summary = "W = A B with rank-r dense factors (f32, f16, bf16): truncated SVD and factorization methods",
    .dtype = WMAT_OBJ,
    .row_align = 16,
    .ws_bytes = lr_ws,
    .forward = lr_forward,
    .backward = lr_backward,
    .prep_bytes = lr_prep_bytes,
    .prepare = lr_prepare,
    .rows = lr_rows,
    .dequant_rows = lr_dequant,
    .nbytes = lr_nbytes,
    .describe = lr_describe,
    .free = lr_free,
    .save = lr_save,
    .load = lr_load,
    .from_f32 = lr_from_f32,
    .row_tol = 1e-5f,
};
