/* Sparse weights: `nm` (N:M along the inputs, e.g. 2:4 and 4:8) and
 * `sparse` (unstructured), both a bitmap of the kept positions plus the
 * kept values in f32 or f16 (layout and kernels: kern_sparse.h). Produced
 * by the pruning methods (src/decomp/prune.c: magnitude, Wanda, SparseGPT);
 * from_f32, the generic conversion, prunes by magnitude (2:4, or half of
 * each row). GGUF has no sparse type: export is refused with the reason. */
#include "wop.h"

#include "kern_sparse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const wmat_wkind wmat__wkind_nm, wmat__wkind_sparse;

typedef struct {
    wmat_wobj obj;
    wmat_spm s;
    int n, m;  /* N:M; 0 for unstructured */
    void *own; /* the arrays when built in memory (else they point into a mapping) */
} spobj;

static const spobj *sp_of(const wmat_tensor *W) { return (const spobj *)W->data; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static size_t vsize(wmat_dtype dt) { return dt == WMAT_F16 ? 2 : 4; }
static int64_t nvals(const wmat_spm *s) { return s->off ? s->off[s->rows] : s->rows * s->per_row; }

const wmat_spm *wmat__spm_of(const wmat_tensor *t)
{
    const wmat_wkind *k = wmat__wkind_of(t);
    return k == &wmat__wkind_nm || k == &wmat__wkind_sparse ? &sp_of(t)->s : NULL;
}

/* ---- run */

static size_t sp_ws(const wmat_tensor *W, int T, const wmat_wexec *ex) { return wmat__spm_ws_bytes(&sp_of(W)->s, T, ex); }

static void sp_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__spm_forward(&sp_of(W)->s, X, Y, T, acc, ws, ex);
}

static void sp_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__spm_backward(&sp_of(W)->s, dY, dX, T, acc, ws, ex);
}

static size_t sp_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)W, (void)ex;
    return 0;
}

static void sp_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)W, (void)x, (void)prep, (void)ex;
}

static void sp_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)prep;
    wmat__spm_rows(&sp_of(W)->s, x, y, r0, r1, acc, ex->isa);
}

static void sp_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    wmat__spm_dequant(&sp_of(W)->s, r0, nr, out);
}

static uint64_t sp_nbytes(const wmat_tensor *W)
{
    const wmat_spm *s = &sp_of(W)->s;
    const int64_t nv = nvals(s);
    return (uint64_t)(s->rows * s->mask_bytes) + (uint64_t)(nv > 0 ? nv : 1) * vsize(s->vdt) +
           (s->off ? (uint64_t)(s->rows + 1) * 4u : 0u);
}

static void sp_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const spobj *o = sp_of(W);
    const char *dt = wmat_dtype_info(o->s.vdt)->name;
    if (o->n) snprintf(buf, n, "%d:%d %s", o->n, o->m, dt);
    else
        snprintf(buf, n, "sparse %.1f%% kept %s", 100.0 * (double)nvals(&o->s) / ((double)o->s.rows * (double)o->s.cols),
                 dt);
}

static void sp_free(void *obj)
{
    spobj *o = obj;
    if (!o) return;
    wmat__free(o->own);
    wmat__free(o);
}

static int sp_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    (void)W, (void)dt;
    *why = "ggml has no sparse type (convert the model to a dense kind first)";
    return 0;
}

/* ---- build */

static int vdt_ok(wmat_dtype dt) { return dt == WMAT_F32 || dt == WMAT_F16; }

static spobj *sp_new(const wmat_wkind *k)
{
    spobj *o = wmat__calloc(1, sizeof *o);
    if (o) o->obj.kind = k;
    return o;
}

static void put_val(void *vals, wmat_dtype dt, int64_t i, float v)
{
    if (dt == WMAT_F16) ((uint16_t *)vals)[i] = wmat_f32_to_f16(v);
    else ((float *)vals)[i] = v;
}

/* The common part of both constructors: bits (rows x mb, filled) to the
 * object, values taken from W at the set bits. */
static int build(const wmat_wkind *k, const float *W, uint8_t *bits, int64_t rows, int64_t cols, int64_t mb, int n, int m,
                 wmat_dtype vdt, void **out)
{
    int64_t nv = 0;
    for (int64_t i = 0; i < rows * mb; i++) nv += __builtin_popcount(bits[i]);
    if (nv > INT32_MAX) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "sparse: %lld kept values (at most 2^31 - 1)", (long long)nv);
    const size_t mbytes = align64((size_t)(rows * mb)), vbytes = align64((size_t)(nv > 0 ? nv : 1) * vsize(vdt));
    const size_t obytes = n ? 0 : (size_t)(rows + 1) * 4;
    spobj *o = sp_new(k);
    char *buf = wmat__aligned_alloc(mbytes + vbytes + obytes);
    if (!o || !buf) {
        wmat__free(o);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "sparse: out of memory for a (%lld x %lld) matrix", (long long)rows,
                              (long long)cols);
    }
    memcpy(buf, bits, (size_t)(rows * mb));
    void *vals = buf + mbytes;
    int32_t *off = n ? NULL : (int32_t *)(buf + mbytes + vbytes);
    memset(vals, 0, vbytes);
    int64_t v = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (off) off[r] = (int32_t)v;
        for (int64_t kk = 0; kk < mb; kk++)
            for (unsigned b = bits[r * mb + kk]; b; b &= b - 1) put_val(vals, vdt, v++, W[r * cols + 8 * kk + __builtin_ctz(b)]);
    }
    if (off) off[rows] = (int32_t)v;
    o->own = buf;
    o->n = n;
    o->m = m;
    o->s = (wmat_spm){rows, cols, (const uint8_t *)buf, mb, vals, vdt, off, n ? cols / m * n : 0, n && 2 * n == m};
    *out = o;
    return WMAT_OK;
}

static int shape_ok(int64_t rows, int64_t cols)
{
    if (rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX)
        return wmat_set_error(WMAT_ERR_INVALID, "sparse: bad shape (%lld x %lld)", (long long)rows, (long long)cols);
    return WMAT_OK;
}

int wmat__sparse_create(const float *W, const uint8_t *mask, int64_t rows, int64_t cols, wmat_dtype vdt, void **out)
{
    *out = NULL;
    int rc = shape_ok(rows, cols);
    if (rc) return rc;
    if (!vdt_ok(vdt)) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "sparse: values are f32 or f16");
    const int64_t mb = (cols + 7) / 8;
    uint8_t *bits = wmat__calloc((size_t)(rows * mb), 1);
    if (!bits) return wmat_set_error(WMAT_ERR_NOMEM, "sparse: out of memory");
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (mask ? mask[r * cols + c] != 0 : W[r * cols + c] != 0.0f) bits[r * mb + c / 8] |= (uint8_t)(1u << (c % 8));
    rc = build(&wmat__wkind_sparse, W, bits, rows, cols, mb, 0, 0, vdt, out);
    wmat__free(bits);
    return rc;
}

static int nm_ok(int n, int m, int64_t cols)
{
    if (!(m == 4 || m == 8) || n < 1 || n >= m)
        return wmat_set_error(WMAT_ERR_INVALID, "N:M sparsity: %d:%d (M is 4 or 8, 1 <= N < M)", n, m);
    if (cols % m)
        return wmat_set_error(WMAT_ERR_INVALID, "N:M sparsity: %lld inputs are not a multiple of M = %d", (long long)cols, m);
    return WMAT_OK;
}

int wmat__nm_create(const float *W, const uint8_t *mask, int64_t rows, int64_t cols, int n, int m, wmat_dtype vdt, void **out)
{
    *out = NULL;
    int rc = shape_ok(rows, cols);
    if (!rc) rc = nm_ok(n, m, cols);
    if (rc) return rc;
    if (!vdt_ok(vdt)) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "N:M sparsity: values are f32 or f16");
    const int64_t mb = (cols + 7) / 8;
    uint8_t *bits = wmat__calloc((size_t)(rows * mb), 1);
    if (!bits) return wmat_set_error(WMAT_ERR_NOMEM, "N:M sparsity: out of memory");
    for (int64_t r = 0; r < rows && !rc; r++)
        for (int64_t g = 0; g < cols && !rc; g += m) {
            int kept = 0;
            for (int j = 0; j < m; j++) {
                const int64_t i = r * cols + g + j;
                if (mask ? mask[i] != 0 : W[i] != 0.0f) {
                    bits[r * mb + (g + j) / 8] |= (uint8_t)(1u << ((g + j) % 8));
                    kept++;
                }
            }
            if (kept > n) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "N:M sparsity: row %lld keeps %d of the %d inputs from %lld (at most %d)",
                                    (long long)r, kept, m, (long long)g, n);
                break;
            }
            /* fewer than N kept: the first free positions hold zeros, so every group has N values */
            for (int j = 0; j < m && kept < n; j++) {
                uint8_t *b = &bits[r * mb + (g + j) / 8];
                const uint8_t bit = (uint8_t)(1u << ((g + j) % 8));
                if (!(*b & bit)) *b |= bit, kept++;
            }
        }
    if (!rc) {
        /* padded positions must hold zeros: W there is not pruned away by the mask */
        float *Wm = NULL;
        if (mask) {
            Wm = wmat__malloc((size_t)(rows * cols) * sizeof(float));
            if (!Wm) rc = wmat_set_error(WMAT_ERR_NOMEM, "N:M sparsity: out of memory");
            else
                for (int64_t i = 0; i < rows * cols; i++) Wm[i] = mask[i] ? W[i] : 0.0f;
        }
        if (!rc) rc = build(&wmat__wkind_nm, Wm ? Wm : W, bits, rows, cols, mb, n, m, vdt, out);
        wmat__free(Wm);
    }
    wmat__free(bits);
    return rc;
}

/* Generic conversions: magnitude pruning. */
static float *abs_copy(const float *W, int64_t n)
{
    float *a = wmat__malloc((size_t)n * sizeof(float));
    if (a)
        for (int64_t i = 0; i < n; i++) a[i] = fabsf(W[i]);
    return a;
}

static int from_mag(const float *W, int64_t rows, int64_t cols, wmat_tensor *out, int nm)
{
    float *sc = abs_copy(W, rows * cols);
    uint8_t *mask = wmat__malloc((size_t)(rows * cols));
    int rc = WMAT_OK;
    if (!sc || !mask) rc = wmat_set_error(WMAT_ERR_NOMEM, "sparse: out of memory");
    else if (nm) rc = nm_ok(2, 4, cols);
    void *obj = NULL;
    if (!rc) {
        if (nm) wmat__mask_nm(sc, rows, cols, 2, 4, mask);
        else wmat__mask_row_topk(sc, rows, cols, cols - cols / 2, mask);
        rc = nm ? wmat__nm_create(W, mask, rows, cols, 2, 4, WMAT_F32, &obj)
                : wmat__sparse_create(W, mask, rows, cols, WMAT_F32, &obj);
    }
    wmat__free(sc);
    wmat__free(mask);
    if (!rc) wmat__tensor_own_obj(out, rows, cols, obj);
    return rc;
}

static int nm_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out) { return from_mag(W, rows, cols, out, 1); }
static int sparse_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    return from_mag(W, rows, cols, out, 0);
}

/* ---- files */

static int sp_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const spobj *o = sp_of(W);
    const wmat_spm *s = &o->s;
    int ok = cJSON_AddStringToObject(desc, "dtype", wmat_dtype_info(s->vdt)->name) != NULL;
    if (o->n) ok = ok && cJSON_AddNumberToObject(desc, "n", o->n) && cJSON_AddNumberToObject(desc, "m", o->m);
    else ok = ok && cJSON_AddNumberToObject(desc, "nnz", (double)nvals(s));
    if (!ok) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    const int64_t nv = nvals(s);
    parts[0] = (wmat_wpart){".sp_mask", WMAT_U8, 2, {s->rows, s->mask_bytes}, s->mask};
    if (o->n) {
        parts[1] = (wmat_wpart){".sp_vals", s->vdt, 2, {s->rows, s->per_row}, s->vals};
        *n_parts = 2;
    } else {
        parts[1] = (wmat_wpart){".sp_vals", s->vdt, 1, {nv > 0 ? nv : 1, 0}, s->vals};
        parts[2] = (wmat_wpart){".sp_off", WMAT_I32, 1, {s->rows + 1, 0}, s->off};
        *n_parts = 3;
    }
    return WMAT_OK;
}

static int jint(const cJSON *o, const char *key, double lo, double hi, int64_t *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be an integer in [%g, %g]", what, key, lo, hi);
    *out = (int64_t)d;
    return WMAT_OK;
}

static int jdtype(const cJSON *desc, wmat_dtype *dt, const char *what)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(desc, "dtype");
    const int v = cJSON_IsString(d) ? wmat_dtype_from_name(d->valuestring) : -1;
    if (v < 0 || !vdt_ok((wmat_dtype)v)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"dtype\" must be \"f32\" or \"f16\"", what);
    *dt = (wmat_dtype)v;
    return WMAT_OK;
}

/* Bits past cols in the last mask byte of every row must be clear. */
static int pad_clear(const uint8_t *mask, int64_t rows, int64_t cols, int64_t mb)
{
    if (cols % 8 == 0) return 1;
    const uint8_t pad = (uint8_t)(0xFFu << (cols % 8));
    for (int64_t r = 0; r < rows; r++)
        if (mask[r * mb + mb - 1] & pad) return 0;
    return 1;
}

static int nm_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int64_t n = 0, m = 0;
    wmat_dtype vdt;
    int rc = jdtype(desc, &vdt, what);
    if (!rc) rc = jint(desc, "m", 4, 8, &m, what);
    if (!rc) rc = jint(desc, "n", 1, 7, &n, what);
    if (rc) return rc;
    if ((rc = nm_ok((int)n, (int)m, cols))) return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s", what, wmat_last_error());
    const int64_t mb = (cols + 7) / 8, per_row = cols / m * n;
    const void *mask, *vals;
    rc = get(user, ".sp_mask", WMAT_U8, 2, rows, mb, &mask);
    if (!rc) rc = get(user, ".sp_vals", vdt, 2, rows, per_row, &vals);
    if (rc) return rc;
    if ((uintptr_t)vals % vsize(vdt)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: values are not aligned", what);
    /* every group keeps exactly N: the kernels step through values at a fixed stride */
    const uint8_t *mk = mask;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols; g += m) {
            const unsigned b = mk[r * mb + g / 8] >> (g % 8) & ((1u << m) - 1);
            if (__builtin_popcount(b) != n)
                return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld keeps %d of the inputs from %lld, not %lld", what,
                                      (long long)r, __builtin_popcount(b), (long long)g, (long long)n);
        }
    if (!pad_clear(mk, rows, cols, mb)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: mask bits past the last input", what);
    spobj *o = sp_new(&wmat__wkind_nm);
    if (!o) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->n = (int)n;
    o->m = (int)m;
    o->s = (wmat_spm){rows, cols, mk, mb, vals, vdt, NULL, per_row, 2 * n == m};
    *obj = o;
    return WMAT_OK;
}

static int sparse_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                       void **obj)
{
    *obj = NULL;
    int64_t nnz = 0;
    wmat_dtype vdt;
    int rc = jdtype(desc, &vdt, what);
    if (!rc) rc = jint(desc, "nnz", 0, fmin((double)rows * (double)cols, INT32_MAX), &nnz, what);
    if (rc) return rc;
    const int64_t mb = (cols + 7) / 8;
    const void *mask, *vals, *offv;
    rc = get(user, ".sp_mask", WMAT_U8, 2, rows, mb, &mask);
    if (!rc) rc = get(user, ".sp_vals", vdt, 1, nnz > 0 ? nnz : 1, 0, &vals);
    if (!rc) rc = get(user, ".sp_off", WMAT_I32, 1, rows + 1, 0, &offv);
    if (rc) return rc;
    if ((uintptr_t)vals % vsize(vdt) || (uintptr_t)offv % 4)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: values or offsets are not aligned", what);
    /* the offsets must be where the mask puts each row's values */
    const uint8_t *mk = mask;
    const int32_t *off = offv;
    int64_t v = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (off[r] != v) return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld's offset %d, its mask says %lld", what, (long long)r, off[r], (long long)v);
        for (int64_t k = 0; k < mb; k++) v += __builtin_popcount(mk[r * mb + k]);
    }
    if (off[rows] != v || v != nnz)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %lld kept values in the mask, nnz %lld, last offset %d", what, (long long)v,
                              (long long)nnz, off[rows]);
    if (!pad_clear(mk, rows, cols, mb)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: mask bits past the last input", what);
    spobj *o = sp_new(&wmat__wkind_sparse);
    if (!o) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->s = (wmat_spm){rows, cols, mk, mb, vals, vdt, off, 0, 0};
    *obj = o;
    return WMAT_OK;
}

#define SP_COMMON                                                                                                      \
    .dtype = WMAT_OBJ, .row_align = 16, .ws_bytes = sp_ws, .forward = sp_forward, .backward = sp_backward,            \
    .prep_bytes = sp_prep_bytes, .prepare = sp_prepare, .rows = sp_rows, .dequant_rows = sp_dequant,                  \
    .nbytes = sp_nbytes, .describe = sp_describe, .free = sp_free, .save = sp_save, .gguf_type = sp_gguf_type,        \
    .row_tol = 1e-5f

const wmat_wkind wmat__wkind_nm = {
    .name = "nm",
    .summary = "N:M sparse along inputs (2:4, 4:8): bitmap + kept values (f32, f16); magnitude, Wanda, SparseGPT",
    SP_COMMON,
    .from_f32 = nm_from_f32,
    .load = nm_load,
    .approx_tol = 0.45f, /* 2:4 of a Gaussian matrix drops ~1/8 of its energy */
};

const wmat_wkind wmat__wkind_sparse = {
    .name = "sparse",
    .summary = "unstructured sparse: bitmap + kept values (f32, f16); magnitude, Wanda, SparseGPT",
    SP_COMMON,
    .from_f32 = sparse_from_f32,
    .load = sparse_load,
    .approx_tol = 0.45f, /* half of a Gaussian row by magnitude: ~7% of its energy */
};
