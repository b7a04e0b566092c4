/* DSFormer weights (kind `dsf`): W = D S with D dense (rows, k) and S
 * (k, cols) holding exactly s non-zeros in every column (a "semi-structured"
 * sparse coefficient matrix: each input column is a combination of s of the
 * k basis columns of D). Produced by `wmat decompose --method dsformer`
 * (SVD init, src/decomp/dsformer.c) and by the trainer's `dsformer` adapter
 * (straight-through top-s, src/train/adapter_dsformer.c).
 *
 * Storage: D as a dense weight of its own kind (f32 or f16), so Y = Z D^T
 * runs through the dense kernels; S column by column: s row indices per
 * column, strictly increasing, one byte each when k <= 256 and two (little
 * endian) otherwise, and s values in D's dtype. The indices are part of
 * nbytes, so the stored size is the real one.
 *
 * Products: Z (T, k) = X S^T is a scatter per input column (z[idx] += v x_c);
 * the batched path transposes blocks of TB rows of X into (cols, TB) panels
 * so that each stored entry is one TB-wide multiply-add on contiguous memory
 * (AVX2+FMA and plain C twins); the input gradient dX = dZ S is the matching
 * gather (each column of dX reads s rows of the dZ panel). The one-row path
 * computes z = S x once in prepare (plain C: AVX2 has no scatter) and then
 * runs D's rows on z. */
#include "wop.h"

#include "kern_dense.h" /* wmat__isa_best */

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSF_X86 1
#define DSF_AVX2 __attribute__((target("avx2,fma")))
#endif

extern const wmat_wkind wmat__wkind_dsf;

typedef struct {
    wmat_wobj obj;
    wmat_tensor D;      /* (rows, k), f32 or f16: a plain dense weight */
    int64_t k, s, cols;
    int iw;             /* bytes per index: 1 (k <= 256) or 2 */
    const uint8_t *idx; /* (cols, s * iw) */
    const void *val;    /* (cols, s) in D's dtype */
    void *own;          /* storage when built in memory (else it points into a mapping) */
} dsf;

static const dsf *dsf_of(const wmat_tensor *W) { return (const dsf *)W->data; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static int dt_ok(wmat_dtype dt) { return dt == WMAT_F32 || dt == WMAT_F16; }
static size_t esize(wmat_dtype dt) { return dt == WMAT_F16 ? 2 : 4; }
static int iw_for(int64_t k) { return k <= 256 ? 1 : 2; }
#define DSF_KMAX 65536

/* Entries q0 .. q0+n-1 of column c as int32 indices and fp32 values. */
static void col_get(const dsf *o, int64_t c, int64_t q0, int64_t n, int32_t *ix, float *v)
{
    const uint8_t *p = o->idx + (size_t)(c * o->s + q0) * (size_t)o->iw;
    if (o->iw == 1)
        for (int64_t q = 0; q < n; q++) ix[q] = p[q];
    else
        for (int64_t q = 0; q < n; q++) ix[q] = (int32_t)(p[2 * q] | (unsigned)p[2 * q + 1] << 8);
    wmat_to_f32(v, (const char *)o->val + (size_t)(c * o->s + q0) * esize(o->D.dtype), o->D.dtype, (uint64_t)n);
}

/* ------------------------------------------------------------ S kernels */

#define TB 16 /* rows of X per panel */
#define QC 64 /* entries of a column decoded at a time */

/* zt[ix[q]][0..TB) += v[q] xc[0..TB)  (the scatter of one column) */
static void scat_c(float *zt, const float *xc, const int32_t *ix, const float *v, int n)
{
    for (int q = 0; q < n; q++) {
        float *z = zt + (size_t)ix[q] * TB;
        for (int t = 0; t < TB; t++) z[t] += v[q] * xc[t];
    }
}
/* dxc[0..TB) = sum_q v[q] dzt[ix[q]][0..TB)  (the gather of one column), added */
static void gath_c(float *dxc, const float *dzt, const int32_t *ix, const float *v, int n)
{
    for (int q = 0; q < n; q++) {
        const float *d = dzt + (size_t)ix[q] * TB;
        for (int t = 0; t < TB; t++) dxc[t] += v[q] * d[t];
    }
}
#ifdef DSF_X86
DSF_AVX2 static void scat_avx2(float *zt, const float *xc, const int32_t *ix, const float *v, int n)
{
    const __m256 x0 = _mm256_loadu_ps(xc), x1 = _mm256_loadu_ps(xc + 8);
    for (int q = 0; q < n; q++) {
        const __m256 vv = _mm256_broadcast_ss(v + q);
        float *z = zt + (size_t)ix[q] * TB;
        _mm256_storeu_ps(z, _mm256_fmadd_ps(vv, x0, _mm256_loadu_ps(z)));
        _mm256_storeu_ps(z + 8, _mm256_fmadd_ps(vv, x1, _mm256_loadu_ps(z + 8)));
    }
}
DSF_AVX2 static void gath_avx2(float *dxc, const float *dzt, const int32_t *ix, const float *v, int n)
{
    __m256 a0 = _mm256_loadu_ps(dxc), a1 = _mm256_loadu_ps(dxc + 8);
    for (int q = 0; q < n; q++) {
        const __m256 vv = _mm256_broadcast_ss(v + q);
        const float *d = dzt + (size_t)ix[q] * TB;
        a0 = _mm256_fmadd_ps(vv, _mm256_loadu_ps(d), a0);
        a1 = _mm256_fmadd_ps(vv, _mm256_loadu_ps(d + 8), a1);
    }
    _mm256_storeu_ps(dxc, a0);
    _mm256_storeu_ps(dxc + 8, a1);
}
#endif

typedef void (*col_fn)(float *, const float *, const int32_t *, const float *, int);

static void pick(int isa, col_fn *scat, col_fn *gath)
{
    *scat = scat_c;
    *gath = gath_c;
#ifdef DSF_X86
    if (isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2) {
        *scat = scat_avx2;
        *gath = gath_avx2;
    }
#else
    (void)isa;
#endif
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* per thread: a (cols, TB) panel and a (k, TB) panel */
static size_t panel_floats(const dsf *o) { return (size_t)TB * (size_t)(o->cols + o->k); }

/* Z (T, k) = X (T, cols) S^T. Threads own blocks of TB rows, so the sums
 * (over the columns in order) do not depend on the thread count. */
void wmat__dsf_s_forward(const wmat_tensor *W, const float *X, float *Z, int T, float *ws, int nt, int isa)
{
    const dsf *o = dsf_of(W);
    col_fn scat, gath;
    pick(isa, &scat, &gath);
    const int nblk = (T + TB - 1) / TB;
    const int64_t cols = o->cols, k = o->k, s = o->s;
    const long work = (long)T * (long)(cols * s);
    (void)work;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int b = 0; b < nblk; b++) {
        float *xt = ws + (size_t)thread_id() * panel_floats(o), *zt = xt + (size_t)TB * cols;
        const int t0 = b * TB, nb = T - t0 < TB ? T - t0 : TB;
        for (int64_t c = 0; c < cols; c++) {
            float *d = xt + (size_t)c * TB;
            for (int t = 0; t < nb; t++) d[t] = X[(size_t)(t0 + t) * cols + c];
            for (int t = nb; t < TB; t++) d[t] = 0.0f;
        }
        memset(zt, 0, (size_t)TB * k * sizeof(float));
        for (int64_t c = 0; c < cols; c++)
            for (int64_t q0 = 0; q0 < s; q0 += QC) {
                int32_t ix[QC];
                float v[QC];
                const int n = (int)(s - q0 < QC ? s - q0 : QC);
                col_get(o, c, q0, n, ix, v);
                scat(zt, xt + (size_t)c * TB, ix, v, n);
            }
        for (int t = 0; t < nb; t++)
            for (int64_t j = 0; j < k; j++) Z[(size_t)(t0 + t) * k + j] = zt[(size_t)j * TB + t];
    }
}

/* dX (T, cols) = dZ (T, k) S, or += when acc. */
void wmat__dsf_s_backward(const wmat_tensor *W, const float *dZ, float *dX, int T, int acc, float *ws, int nt, int isa)
{
    const dsf *o = dsf_of(W);
    col_fn scat, gath;
    pick(isa, &scat, &gath);
    const int nblk = (T + TB - 1) / TB;
    const int64_t cols = o->cols, k = o->k, s = o->s;
    const long work = (long)T * (long)(cols * s);
    (void)work;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int b = 0; b < nblk; b++) {
        float *dxt = ws + (size_t)thread_id() * panel_floats(o), *dzt = dxt + (size_t)TB * cols;
        const int t0 = b * TB, nb = T - t0 < TB ? T - t0 : TB;
        for (int64_t j = 0; j < k; j++) {
            float *d = dzt + (size_t)j * TB;
            for (int t = 0; t < nb; t++) d[t] = dZ[(size_t)(t0 + t) * k + j];
            for (int t = nb; t < TB; t++) d[t] = 0.0f;
        }
        memset(dxt, 0, (size_t)TB * cols * sizeof(float));
        for (int64_t c = 0; c < cols; c++)
            for (int64_t q0 = 0; q0 < s; q0 += QC) {
                int32_t ix[QC];
                float v[QC];
                const int n = (int)(s - q0 < QC ? s - q0 : QC);
                col_get(o, c, q0, n, ix, v);
                gath(dxt + (size_t)c * TB, dzt, ix, v, n);
            }
        for (int t = 0; t < nb; t++) {
            float *dx = dX + (size_t)(t0 + t) * cols;
            if (acc)
                for (int64_t c = 0; c < cols; c++) dx[c] += dxt[(size_t)c * TB + t];
            else
                for (int64_t c = 0; c < cols; c++) dx[c] = dxt[(size_t)c * TB + t];
        }
    }
}

/* z (k) = S x, one column at a time (the decode path's share of S). The
 * entries of a column hit distinct rows of z, so the scalar updates do not
 * wait on each other; f32 values with one-byte indices are read in place
 * (the common case), the rest through col_get. AVX2 has no scatter, so
 * this stays plain C (four banks of z, to keep a row's consecutive updates
 * apart, measured no faster on mix4m's gate). */
static void s_matvec(const dsf *o, const float *x, float *z)
{
    const int64_t s = o->s;
    memset(z, 0, (size_t)o->k * sizeof(float));
    if (o->D.dtype == WMAT_F32 && o->iw == 1) {
        const float *restrict v = o->val;
        const uint8_t *restrict ix = o->idx;
        float *restrict zz = z;
        for (int64_t c = 0; c < o->cols; c++) {
            const float xc = x[c];
            const uint8_t *ic = ix + c * s;
            const float *vc = v + c * s;
            for (int64_t q = 0; q < s; q++) zz[ic[q]] += vc[q] * xc;
        }
        return;
    }
    for (int64_t c = 0; c < o->cols; c++) {
        const float xc = x[c];
        for (int64_t q0 = 0; q0 < s; q0 += QC) {
            int32_t ix[QC];
            float v[QC];
            const int n = (int)(s - q0 < QC ? s - q0 : QC);
            col_get(o, c, q0, n, ix, v);
            for (int q = 0; q < n; q++) z[ix[q]] += v[q] * xc;
        }
    }
}

/* ------------------------------------------------------------ the table */

static const wmat_wkind *kind_d(const dsf *o) { return wmat__wkind_of(&o->D); }

/* ws: Z (T, k), the S panels for every thread, then D's own workspace */
static size_t zbytes(const dsf *o, int T) { return align64((size_t)T * (size_t)o->k * sizeof(float)); }
static size_t pbytes(const dsf *o, int nt) { return align64((size_t)(nt > 0 ? nt : 1) * panel_floats(o) * sizeof(float)); }

static size_t ds_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    const dsf *o = dsf_of(W);
    return zbytes(o, T) + pbytes(o, ex->n_threads) + kind_d(o)->ws_bytes(&o->D, T, ex);
}

static void ds_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const dsf *o = dsf_of(W);
    float *Z = ws, *pan = (float *)((char *)ws + zbytes(o, T));
    void *inner = (char *)ws + zbytes(o, T) + pbytes(o, ex->n_threads);
    wmat__dsf_s_forward(W, X, Z, T, pan, ex->n_threads, ex->isa);
    kind_d(o)->forward(&o->D, Z, Y, T, acc, inner, ex);
}

/* dX = dY W = (dY D) S */
static void ds_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const dsf *o = dsf_of(W);
    float *Z = ws, *pan = (float *)((char *)ws + zbytes(o, T));
    void *inner = (char *)ws + zbytes(o, T) + pbytes(o, ex->n_threads);
    kind_d(o)->backward(&o->D, dY, Z, T, 0, inner, ex);
    wmat__dsf_s_backward(W, Z, dX, T, acc, pan, ex->n_threads, ex->isa);
}

/* prep: z = S x (k floats), then D's preparation of z */
static size_t ds_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    const dsf *o = dsf_of(W);
    return align64((size_t)o->k * sizeof(float)) + kind_d(o)->prep_bytes(&o->D, ex);
}

static void ds_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const dsf *o = dsf_of(W);
    float *z = prep;
    s_matvec(o, x, z);
    kind_d(o)->prepare(&o->D, z, (char *)prep + align64((size_t)o->k * sizeof(float)), ex);
}

static void ds_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    const dsf *o = dsf_of(W);
    kind_d(o)->rows(&o->D, prep, (const char *)prep + align64((size_t)o->k * sizeof(float)), y, r0, r1, acc, ex);
}

/* out = D[r0 : r0+nr] S, D read in chunks of 256 of its columns (no allocation) */
static void ds_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const dsf *o = dsf_of(W);
    const int64_t k = o->k, cols = o->cols;
    const size_t es = esize(o->D.dtype);
    float d[256];
    memset(out, 0, (size_t)(nr * cols) * sizeof(float));
    for (int64_t i = 0; i < nr; i++)
        for (int64_t j0 = 0; j0 < k; j0 += 256) {
            const int64_t nj = k - j0 < 256 ? k - j0 : 256;
            wmat_to_f32(d, (const char *)o->D.data + (size_t)((r0 + i) * k + j0) * es, o->D.dtype, (uint64_t)nj);
            for (int64_t c = 0; c < cols; c++)
                for (int64_t q0 = 0; q0 < o->s; q0 += QC) {
                    int32_t ix[QC];
                    float v[QC];
                    const int n = (int)(o->s - q0 < QC ? o->s - q0 : QC);
                    col_get(o, c, q0, n, ix, v);
                    for (int q = 0; q < n; q++)
                        if (ix[q] >= j0 && ix[q] < j0 + nj) out[i * cols + c] += d[ix[q] - j0] * v[q];
                }
        }
}

static uint64_t ds_nbytes(const wmat_tensor *W)
{
    const dsf *o = dsf_of(W);
    return (uint64_t)o->D.nbytes + (uint64_t)(o->cols * o->s) * (uint64_t)(o->iw + (int)esize(o->D.dtype));
}

static void ds_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const dsf *o = dsf_of(W);
    snprintf(buf, n, "dsf k%lld s%lld %s", (long long)o->k, (long long)o->s, wmat_dtype_info(o->D.dtype)->name);
}

static void ds_free(void *obj)
{
    dsf *o = obj;
    if (!o) return;
    wmat__free(o->own);
    wmat__free(o);
}

static int ds_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    (void)W, (void)dt;
    *why = "GGUF has no dense x column-sparse type (save as a native directory, or convert to f32)";
    return 0;
}

static dsf *ds_new(void)
{
    dsf *o = wmat__calloc(1, sizeof *o);
    if (o) o->obj.kind = &wmat__wkind_dsf;
    return o;
}

static void set_d(dsf *o, wmat_dtype dt, int64_t rows, int64_t k, void *data)
{
    wmat__tensor_init2(&o->D, dt, rows, k, data);
    snprintf(o->D.name, sizeof o->D.name, "D");
}

/* 1 when every column's indices are < k and strictly increasing. */
static int cols_valid(const dsf *o, int64_t *bad)
{
    for (int64_t c = 0; c < o->cols; c++) {
        int32_t prev = -1;
        for (int64_t q0 = 0; q0 < o->s; q0 += QC) {
            int32_t ix[QC];
            float v[QC];
            const int n = (int)(o->s - q0 < QC ? o->s - q0 : QC);
            col_get(o, c, q0, n, ix, v);
            for (int q = 0; q < n; q++) {
                if (ix[q] <= prev || ix[q] >= o->k) {
                    *bad = c;
                    return 0;
                }
                prev = ix[q];
            }
        }
    }
    return 1;
}

int wmat__dsf_create(wmat_dtype dt, int64_t rows, int64_t cols, int64_t k, int64_t s, const float *D, const int32_t *idx,
                     const float *val, void **out)
{
    *out = NULL;
    if (!dt_ok(dt)) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "dsf: D and S are f32 or f16, not %s", wmat_dtype_info(dt)->name);
    if (rows < 1 || cols < 1 || k < 1 || k > DSF_KMAX || s < 1 || s > k)
        return wmat_set_error(WMAT_ERR_INVALID, "dsf: k %lld, s %lld for a (%lld x %lld) matrix (1 <= s <= k <= %d)",
                              (long long)k, (long long)s, (long long)rows, (long long)cols, DSF_KMAX);
    const int iw = iw_for(k);
    const size_t nd = wmat_dtype_bytes(dt, (uint64_t)(rows * k)), ni = (size_t)(cols * s) * (size_t)iw,
                 nv = (size_t)(cols * s) * esize(dt);
    dsf *o = ds_new();
    char *buf = wmat__aligned_alloc(align64(nd) + align64(ni) + nv);
    if (!o || !buf) {
        wmat__free(o);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "dsf: out of memory for k %lld, s %lld", (long long)k, (long long)s);
    }
    wmat_from_f32(buf, dt, D, (uint64_t)(rows * k));
    uint8_t *ib = (uint8_t *)buf + align64(nd);
    char *vb = buf + align64(nd) + align64(ni);
    /* each column sorted by index (insertion sort of s pairs: s is small) */
    for (int64_t c = 0; c < cols; c++) {
        for (int64_t q = 0; q < s; q++) {
            int32_t i = idx[c * s + q];
            float v = val[c * s + q];
            int64_t p = q;
            uint8_t *ic = ib + (size_t)(c * s) * (size_t)iw;
            float tmpv;
            /* shift larger entries (already written) one slot up */
            while (p > 0) {
                const int32_t ip = iw == 1 ? ic[p - 1] : (int32_t)(ic[2 * (p - 1)] | (unsigned)ic[2 * (p - 1) + 1] << 8);
                if (ip <= i) break;
                if (iw == 1) ic[p] = ic[p - 1];
                else ic[2 * p] = ic[2 * (p - 1)], ic[2 * p + 1] = ic[2 * (p - 1) + 1];
                wmat_to_f32(&tmpv, vb + (size_t)(c * s + p - 1) * esize(dt), dt, 1);
                wmat_from_f32(vb + (size_t)(c * s + p) * esize(dt), dt, &tmpv, 1);
                p--;
            }
            if (iw == 1) ic[p] = (uint8_t)(i < 0 ? 255 : i);
            else ic[2 * p] = (uint8_t)(i & 0xFF), ic[2 * p + 1] = (uint8_t)((i >> 8) & 0xFF);
            wmat_from_f32(vb + (size_t)(c * s + p) * esize(dt), dt, &v, 1);
            if (i < 0 || i >= k) {
                wmat__free(o);
                wmat__free(buf);
                return wmat_set_error(WMAT_ERR_INVALID, "dsf: index %d of column %lld is outside 0..%lld", i, (long long)c,
                                      (long long)k - 1);
            }
        }
    }
    o->own = buf;
    set_d(o, dt, rows, k, buf);
    o->k = k;
    o->s = s;
    o->cols = cols;
    o->iw = iw;
    o->idx = ib;
    o->val = vb;
    int64_t bad = 0;
    if (!cols_valid(o, &bad)) {
        ds_free(o);
        return wmat_set_error(WMAT_ERR_INVALID, "dsf: column %lld repeats an index", (long long)bad);
    }
    *out = o;
    return WMAT_OK;
}

void wmat__dsf_shape(const wmat_tensor *W, int64_t *k, int64_t *s)
{
    const dsf *o = dsf_of(W);
    *k = o->k;
    *s = o->s;
}

void wmat__dsf_column(const wmat_tensor *W, int64_t c, int32_t *idx, float *val)
{
    const dsf *o = dsf_of(W);
    for (int64_t q0 = 0; q0 < o->s; q0 += QC) col_get(o, c, q0, o->s - q0 < QC ? o->s - q0 : QC, idx + q0, val + q0);
}

const wmat_tensor *wmat__dsf_d(const wmat_tensor *W) { return &dsf_of(W)->D; }

/* ------------------------------------------------------------ files */

static int ds_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const dsf *o = dsf_of(W);
    if (!cJSON_AddNumberToObject(desc, "k", (double)o->k) || !cJSON_AddNumberToObject(desc, "s", (double)o->s) ||
        !cJSON_AddStringToObject(desc, "dtype", wmat_dtype_info(o->D.dtype)->name))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".dsf_d", o->D.dtype, 2, {o->D.shape[0], o->k}, o->D.data};
    parts[1] = (wmat_wpart){".dsf_idx", WMAT_U8, 2, {o->cols, o->s * o->iw}, o->idx};
    parts[2] = (wmat_wpart){".dsf_val", o->D.dtype, 2, {o->cols, o->s}, o->val};
    *n_parts = 3;
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

static int ds_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int64_t k = 0, s = 0;
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(desc, "dtype");
    const int d = cJSON_IsString(dj) ? wmat_dtype_from_name(dj->valuestring) : -1;
    if (d < 0 || !dt_ok((wmat_dtype)d)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"dtype\" must be \"f32\" or \"f16\"", what);
    int rc = jint(desc, "k", 1, DSF_KMAX, &k, what);
    if (!rc) rc = jint(desc, "s", 1, (double)k, &s, what);
    if (rc) return rc;
    const wmat_dtype dt = (wmat_dtype)d;
    const int iw = iw_for(k);
    const void *D, *ix, *v;
    rc = get(user, ".dsf_d", dt, 2, rows, k, &D);
    if (!rc) rc = get(user, ".dsf_idx", WMAT_U8, 2, cols, s * iw, &ix);
    if (!rc) rc = get(user, ".dsf_val", dt, 2, cols, s, &v);
    if (rc) return rc;
    if ((uintptr_t)D % esize(dt) || (uintptr_t)v % esize(dt))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: D or the values are not aligned to their element size", what);
    dsf *o = ds_new();
    if (!o) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    set_d(o, dt, rows, k, (void *)D);
    o->k = k;
    o->s = s;
    o->cols = cols;
    o->iw = iw;
    o->idx = ix;
    o->val = v;
    /* the kernels index the panels by these: each must be a row of S, once */
    int64_t bad = 0;
    if (!cols_valid(o, &bad)) {
        ds_free(o);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: column %lld of S has an index >= k (%lld) or out of order", what,
                              (long long)bad, (long long)k);
    }
    *obj = o;
    return WMAT_OK;
}

/* An exact factorization: W = W I (k = cols) when rows >= cols, with a
 * second stored entry of value 0 per column so that s = 2 runs through the
 * kernels as a real DSFormer weight does; W = I W (k = rows, S dense: s = k)
 * otherwise, which keeps a wide matrix near its dense size. */
static int ds_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int tall = rows >= cols;
    const int64_t k = tall ? cols : rows, s = tall ? (cols > 1 ? 2 : 1) : rows;
    if (k > DSF_KMAX) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "dsf: from_f32 of a (%lld x %lld) matrix", (long long)rows, (long long)cols);
    int32_t *idx = wmat__malloc((size_t)(cols * s) * sizeof(int32_t));
    float *val = wmat__malloc((size_t)(cols * s) * sizeof(float));
    float *I = tall ? NULL : wmat__calloc((size_t)(k * k), sizeof(float));
    if (!idx || !val || (!tall && !I)) {
        wmat__free(idx);
        wmat__free(val);
        wmat__free(I);
        return wmat_set_error(WMAT_ERR_NOMEM, "dsf: out of memory");
    }
    for (int64_t c = 0; c < cols; c++)
        if (tall) {
            idx[c * s] = (int32_t)c;
            val[c * s] = 1.0f;
            if (s == 2) idx[c * s + 1] = (int32_t)((c + 1) % cols), val[c * s + 1] = 0.0f;
        } else
            for (int64_t j = 0; j < k; j++) idx[c * s + j] = (int32_t)j, val[c * s + j] = W[j * cols + c];
    for (int64_t j = 0; !tall && j < k; j++) I[j * k + j] = 1.0f;
    void *obj = NULL;
    int rc = wmat__dsf_create(WMAT_F32, rows, cols, k, s, tall ? W : I, idx, val, &obj);
    wmat__free(idx);
    wmat__free(val);
    wmat__free(I);
    if (rc) return rc;
    wmat__tensor_own_obj(out, rows, cols, obj);
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_dsf = {
    .name = "dsf",
    .summary = "DSFormer W = D S: dense D (rows x k, f32/f16), S with s non-zeros per column (indices counted)",
    .dtype = WMAT_OBJ,
    .row_align = 16,
    .ws_bytes = ds_ws,
    .forward = ds_forward,
    .backward = ds_backward,
    .prep_bytes = ds_prep_bytes,
    .prepare = ds_prepare,
    .rows = ds_rows,
    .dequant_rows = ds_dequant,
    .nbytes = ds_nbytes,
    .describe = ds_describe,
    .free = ds_free,
    .save = ds_save,
    .load = ds_load,
    .gguf_type = ds_gguf_type,
    .from_f32 = ds_from_f32,
    .row_tol = 1e-5f,
};
