/* BitStack weights (Wang et al., "BitStack: any-size compression of large
 * language models", ICLR 2025; SPECS.md G3): W ~ sum_{i < active} S_i .*
 * (u_i v_i), a stack of nb blocks, each a sign matrix S_i (+-1, one bit per
 * weight) times a rank-k magnitude u_i (rows, k) v_i (k, cols) in fp16.
 * Every block is stored; only the first `active` take part in products and
 * in nbytes, so one stored stack runs at any of nb sizes per matrix, and a
 * model's stacks together at any budget (wmat_model_set_budget picks the
 * longest prefix of the global order that fits; the order is the `pos` of
 * each block, also stored).
 *
 * Storage (a native directory's parts):
 *   .bs_sign  u8  (nb * rows, ceil(cols/8))  block i's row r at i * rows + r;
 *                                              bit c%8 of byte c/8 set: +1
 *   .bs_u     f16 (nb, rows * k)             u_i row-major (rows, k)
 *   .bs_v     f16 (nb, k * cols)             v_i row-major (k, cols)
 *   .bs_pos   i32 (nb)                        block i's place in the model's
 *                                              order (< 0: always loaded)
 * and in the description: "blocks", "rank", "active".
 *
 * Kernels: (S .* (u v)) x = sum_q u[:, q] .* (S (v[q, :] .* x)), so the
 * one-row path prepares t_iq = v_iq .* x and its sum once, and each row is
 * a masked sum over the set sign bits per (block, q): y_r += u_rq (2
 * sum_{S=+1} t - sum t). The masked sum has an AVX-512 path (16 bits are a
 * lane mask), an AVX2 path (bits shifted into the lanes' sign bits for a
 * blend) and a plain C twin. The batched paths dequantize tiles of rows of
 * the active blocks for a GEMM. */
#include "wop.h"

#include "kern_dense.h" /* wmat__isa_best */
#include "linalg/dense.h"
#include "linalg/linalg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>


#define BS_MAX_BLOCKS 256
#define BS_MAX_RANK 64

extern const wmat_wkind wmat__wkind_bitstack;

typedef struct {
    wmat_wobj obj;
    int64_t rows, cols, sb;
    int k, nb, active;
    const uint8_t *sign; /* (nb * rows, sb) */
    const uint16_t *u;   /* (nb, rows * k) f16 */
    const uint16_t *v;   /* (nb, k * cols) f16 */
    int32_t *pos;        /* (nb), owned (the order can be set after loading) */
    float *uf, *vf;      /* the factors as f32, owned */
    void *own;           /* the stored arrays when built in memory */
} bsobj;

static const bsobj *bs_of(const wmat_tensor *W) { return (const bsobj *)W->data; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static int sign_at(const uint8_t *s, int64_t c) { return s[c >> 3] >> (c & 7) & 1; }

float wmat__bitstack_masked_sum(const uint8_t *bits, const float *t, int64_t n, int isa)
{
    return wmat__bits_sum_for(isa)(bits, t, n);
}

/* ---- run: one row */

static size_t bs_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    const bsobj *o = bs_of(W);
    return ((size_t)o->nb * (size_t)o->k * (size_t)(o->cols + 1)) * sizeof(float) + 64;
}

/* prep: t (active * k, cols) = v_iq .* x, then the sums of each row of t */
static void bs_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)ex;
    const bsobj *o = bs_of(W);
    const int64_t n = o->cols, nq = (int64_t)o->active * o->k;
    float *t = prep, *tot = t + nq * n;
    for (int64_t q = 0; q < nq; q++) {
        const float *v = o->vf + q * n;
        float *tq = t + q * n;
        double s = 0.0;
        for (int64_t c = 0; c < n; c++) {
            tq[c] = v[c] * x[c];
            s += tq[c];
        }
        tot[q] = (float)s;
    }
}

static void bs_rows_isa(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
    const bsobj *o = bs_of(W);
    const int64_t n = o->cols, m = o->rows, k = o->k, nq = (int64_t)o->active * k;
    const float *t = prep, *tot = t + nq * n;
    const wmat_bits_sum_fn ms = wmat__bits_sum_for(isa);
    for (int64_t r = r0; r < r1; r++) {
        float a = 0.0f;
        for (int i = 0; i < o->active; i++) {
            const uint8_t *s = o->sign + ((int64_t)i * m + r) * o->sb;
            const float *u = o->uf + ((int64_t)i * m + r) * k;
            for (int64_t q = 0; q < k; q++) {
                const int64_t iq = (int64_t)i * k + q;
                a += u[q] * (2.0f * ms(s, t + iq * n, n) - tot[iq]);
            }
        }
        y[r] = acc ? y[r] + a : a;
    }
}

static void bs_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    bs_rows_isa(W, prep, y, r0, r1, acc, ex->isa);
}

void wmat__bitstack_rows(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
    bs_rows_isa(W, prep, y, r0, r1, acc, isa);
}

/* Rows of the sum of the first nblocks blocks. */
static void dequant_n(const bsobj *o, int nblocks, int64_t r0, int64_t nr, float *out)
{
    const int64_t n = o->cols, m = o->rows, k = o->k;
    for (int64_t ir = 0; ir < nr; ir++) {
        const int64_t r = r0 + ir;
        float *w = out + ir * n;
        memset(w, 0, (size_t)n * sizeof(float));
        for (int i = 0; i < nblocks; i++) {
            const uint8_t *s = o->sign + ((int64_t)i * m + r) * o->sb;
            const float *u = o->uf + ((int64_t)i * m + r) * k, *v = o->vf + (int64_t)i * k * n;
            if (k == 1) { /* no branch on the (random) bits: +-1 from the bit */
                const float u0 = u[0];
                for (int64_t c = 0; c < n; c++) w[c] += (float)(2 * sign_at(s, c) - 1) * (u0 * v[c]);
                continue;
            }
            for (int64_t c = 0; c < n; c++) {
                float mag = 0.0f;
                for (int64_t q = 0; q < k; q++) mag += u[q] * v[q * n + c];
                w[c] += (float)(2 * sign_at(s, c) - 1) * mag;
            }
        }
    }
}

static void bs_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const bsobj *o = bs_of(W);
    dequant_n(o, o->active, r0, nr, out);
}

int wmat__bitstack_dequant_n(const wmat_tensor *W, int nblocks, float *out)
{
    if (wmat__wkind_of(W) != &wmat__wkind_bitstack) return wmat_set_error(WMAT_ERR_INVALID, "not a bitstack weight");
    const bsobj *o = bs_of(W);
    if (nblocks < 0 || nblocks > o->nb)
        return wmat_set_error(WMAT_ERR_INVALID, "bitstack: %d blocks asked of %d", nblocks, o->nb);
    dequant_n(o, nblocks, 0, o->rows, out);
    return WMAT_OK;
}

/* ---- run: batched, tiles of rows dequantized into ws (tiles.c) */

static void bs_rows_deq(const void *obj, int64_t r0, int64_t nr, float *out)
{
    const bsobj *o = obj;
    dequant_n(o, o->active, r0, nr, out);
}

static size_t bs_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)T;
    return wmat__tiles_ws_bytes(bs_of(W)->rows, bs_of(W)->cols, ex);
}

static void bs_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const bsobj *o = bs_of(W);
    wmat__tiles_forward(bs_rows_deq, o, o->rows, o->cols, X, Y, T, acc, ws, ex);
}

static void bs_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const bsobj *o = bs_of(W);
    wmat__tiles_backward(bs_rows_deq, o, o->rows, o->cols, dY, dX, T, acc, ws, ex);
}

/* ---- inspect */

static uint64_t block_bytes(const bsobj *o)
{
    return (uint64_t)(o->rows * o->sb) + 2u * (uint64_t)o->k * (uint64_t)(o->rows + o->cols);
}

static uint64_t bs_nbytes(const wmat_tensor *W)
{
    const bsobj *o = bs_of(W);
    return (uint64_t)o->active * block_bytes(o);
}

static void bs_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const bsobj *o = bs_of(W);
    const double nw = (double)o->rows * (double)o->cols;
    snprintf(buf, n, "bitstack %d of %d blocks, rank %d, %.2f bpw", o->active, o->nb, o->k,
             8.0 * (double)bs_nbytes(W) / nw);
}

static int bs_stack(const wmat_tensor *W, int *active, int32_t *pos, uint64_t *bytes)
{
    const bsobj *o = bs_of(W);
    if (active) *active = o->active;
    for (int i = 0; i < o->nb; i++) {
        if (pos) pos[i] = o->pos[i];
        if (bytes) bytes[i] = block_bytes(o);
    }
    return o->nb;
}

static int bs_set_active(wmat_tensor *W, int n)
{
    bsobj *o = (bsobj *)W->data;
    if (n < 1 || n > o->nb) return wmat_set_error(WMAT_ERR_INVALID, "%s: %d active blocks asked of %d", W->name, n, o->nb);
    o->active = n;
    W->nbytes = (size_t)bs_nbytes(W);
    return WMAT_OK;
}

int wmat__bitstack_shape(const wmat_tensor *W, int *rank, int *blocks, int *active)
{
    if (wmat__wkind_of(W) != &wmat__wkind_bitstack) return wmat_set_error(WMAT_ERR_INVALID, "not a bitstack weight");
    const bsobj *o = bs_of(W);
    if (rank) *rank = o->k;
    if (blocks) *blocks = o->nb;
    if (active) *active = o->active;
    return WMAT_OK;
}

int wmat__bitstack_set_order(wmat_tensor *W, const int32_t *pos)
{
    if (wmat__wkind_of(W) != &wmat__wkind_bitstack) return wmat_set_error(WMAT_ERR_INVALID, "not a bitstack weight");
    bsobj *o = (bsobj *)W->data;
    memcpy(o->pos, pos, (size_t)o->nb * sizeof(int32_t));
    return WMAT_OK;
}

static void bs_free(void *obj)
{
    bsobj *o = obj;
    if (!o) return;
    wmat__free(o->pos);
    wmat__free(o->uf);
    wmat__free(o->own);
    wmat__free(o);
}

static int bs_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    (void)W, (void)dt;
    *why = "ggml has no sign-stack type (convert the model to a dense kind first)";
    return 0;
}

/* ---- build */

/* The f32 factors and the owned order from the stored arrays; the order
 * (blocks >= 1 strictly increasing, block 0 before all) is checked. */
static int finish_obj(bsobj *o, const int32_t *pos, const char *what)
{
    const int64_t nu = (int64_t)o->nb * o->rows * o->k, nv = (int64_t)o->nb * o->k * o->cols;
    o->uf = wmat__malloc((size_t)(nu + nv) * sizeof(float));
    o->pos = wmat__malloc((size_t)o->nb * sizeof(int32_t));
    if (!o->uf || !o->pos) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->vf = o->uf + nu;
    for (int64_t i = 0; i < nu; i++) o->uf[i] = wmat_f16_to_f32(o->u[i]);
    for (int64_t i = 0; i < nv; i++) o->vf[i] = wmat_f16_to_f32(o->v[i]);
    for (int64_t i = 0; i < nu + nv; i++)
        if (!isfinite(o->uf[i])) return wmat_set_error(WMAT_ERR_FORMAT, "%s: a non-finite factor", what);
    for (int i = 0; i < o->nb; i++) {
        o->pos[i] = pos ? pos[i] : i - 1;
        if (i >= 1 && o->pos[i] <= o->pos[i - 1])
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: block %d's place in the order (%d) is not after block %d's (%d)",
                                  what, i, (int)o->pos[i], i - 1, (int)o->pos[i - 1]);
    }
    if (o->cols % 8) {
        const uint8_t pad = (uint8_t)(0xFFu << (o->cols % 8));
        for (int64_t i = 0; i < (int64_t)o->nb * o->rows; i++)
            if (o->sign[i * o->sb + o->sb - 1] & pad)
                return wmat_set_error(WMAT_ERR_FORMAT, "%s: sign bits past the last input", what);
    }
    return WMAT_OK;
}

static int shape_ok(int64_t rows, int64_t cols, int k, int nb)
{
    return rows >= 1 && cols >= 1 && rows <= INT32_MAX && cols <= INT32_MAX && k >= 1 && k <= BS_MAX_RANK &&
           k <= (rows < cols ? rows : cols) && nb >= 1 && nb <= BS_MAX_BLOCKS;
}

int wmat__bitstack_create(int64_t rows, int64_t cols, int k, int nb, const uint8_t *sign, const float *u, const float *v,
                          const int32_t *pos, void **obj)
{
    *obj = NULL;
    if (!shape_ok(rows, cols, k, nb))
        return wmat_set_error(WMAT_ERR_INVALID, "bitstack: bad shape (%lld x %lld, rank %d, %d blocks)", (long long)rows,
                              (long long)cols, k, nb);
    const int64_t sb = (cols + 7) / 8, nu = (int64_t)nb * rows * k, nv = (int64_t)nb * k * cols;
    const size_t s_bytes = align64((size_t)(nb * rows * sb)), u_bytes = align64((size_t)nu * 2);
    bsobj *o = wmat__calloc(1, sizeof *o);
    char *buf = wmat__aligned_alloc(s_bytes + u_bytes + (size_t)nv * 2);
    if (!o || !buf) {
        wmat__free(o);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "bitstack: out of memory for a (%lld x %lld) matrix", (long long)rows,
                              (long long)cols);
    }
    memcpy(buf, sign, (size_t)(nb * rows * sb));
    uint16_t *uh = (uint16_t *)(buf + s_bytes), *vh = (uint16_t *)(buf + s_bytes + u_bytes);
    for (int64_t i = 0; i < nu; i++) uh[i] = wmat_f32_to_f16(u[i]);
    for (int64_t i = 0; i < nv; i++) vh[i] = wmat_f32_to_f16(v[i]);
    o->obj.kind = &wmat__wkind_bitstack;
    o->rows = rows, o->cols = cols, o->sb = sb, o->k = k, o->nb = nb, o->active = nb;
    o->sign = (const uint8_t *)buf, o->u = uh, o->v = vh, o->own = buf;
    int rc = finish_obj(o, pos, "bitstack");
    if (rc) {
        bs_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

int wmat__bitstack_decompose(const float *W, int64_t rows, int64_t cols, const float *colscale, int k, int nb, void **obj)
{
    *obj = NULL;
    if (!shape_ok(rows, cols, k, nb))
        return wmat_set_error(WMAT_ERR_INVALID, "bitstack: bad shape (%lld x %lld, rank %d, %d blocks)", (long long)rows,
                              (long long)cols, k, nb);
    const int64_t m = rows, n = cols, mn = m < n ? m : n, sb = (n + 7) / 8;
    float *R = wmat__malloc((size_t)(m * n) * sizeof(float));
    double *A = wmat__malloc((size_t)(m * n) * sizeof(double)), *U = wmat__malloc((size_t)(m * mn) * sizeof(double));
    double *VT = wmat__malloc((size_t)(mn * n) * sizeof(double)), *sv = wmat__malloc((size_t)mn * sizeof(double));
    float *u = wmat__malloc((size_t)(nb * m * k) * sizeof(float)), *v = wmat__malloc((size_t)(nb * k * n) * sizeof(float));
    float *veff = wmat__malloc((size_t)(k * n) * sizeof(float));
    uint8_t *sign = wmat__calloc((size_t)(nb * m * sb), 1);
    int rc = WMAT_OK;
    if (!R || !A || !U || !VT || !sv || !u || !v || !veff || !sign) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bitstack: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
        goto done;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) R[r * n + c] = W[r * n + c] * (colscale ? colscale[c] : 1.0f);
    for (int i = 0; i < nb; i++) {
        uint8_t *S = sign + (int64_t)i * m * sb;
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) {
                const float x = R[r * n + c];
                if (x >= 0.0f) S[r * sb + c / 8] |= (uint8_t)(1u << (c % 8)); /* sign(0) = +1 */
                A[r * n + c] = fabs((double)x);
            }
        if ((rc = wmat__dgesdd((int)m, (int)n, A, (int)n, sv, U, (int)mn, VT, (int)n))) goto done;
        float *ui = u + (int64_t)i * m * k, *vi = v + (int64_t)i * k * n;
        for (int q = 0; q < k; q++) {
            const double rs = sqrt(sv[q] > 0 ? sv[q] : 0.0);
            for (int64_t r = 0; r < m; r++) ui[r * k + q] = f16r((float)(U[r * mn + q] * rs));
            for (int64_t c = 0; c < n; c++) {
                /* stored: v / s (the activation scale folded into the block), rounded;
                 * the residual takes what is stored, times s again */
                const double s = colscale ? colscale[c] : 1.0;
                vi[q * n + c] = f16r((float)(VT[q * n + c] * rs / s));
                veff[q * n + c] = (float)((double)vi[q * n + c] * s);
            }
        }
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) {
                float mag = 0.0f;
                for (int q = 0; q < k; q++) mag += ui[r * k + q] * veff[q * n + c];
                R[r * n + c] -= sign_at(S + r * sb, c) ? mag : -mag;
            }
    }
    rc = wmat__bitstack_create(m, n, k, nb, sign, u, v, NULL, obj);
done:
    wmat__free(R);
    wmat__free(A);
    wmat__free(U);
    wmat__free(VT);
    wmat__free(sv);
    wmat__free(u);
    wmat__free(v);
    wmat__free(veff);
    wmat__free(sign);
    return rc;
}

/* The generic conversion: the decomposition without activation scaling,
 * rank 1, 8 blocks (fewer where 8 would pass 48 bits per weight: tiny
 * matrices, whose factors cost more than their signs), all active. */
static int bs_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    void *obj;
    const double per = 8.0 * (double)(rows * ((cols + 7) / 8) + 2 * (rows + cols)) / ((double)rows * (double)cols);
    int nb = (int)(48.0 / per);
    nb = nb < 1 ? 1 : nb > 8 ? 8 : nb;
    int rc = wmat__bitstack_decompose(W, rows, cols, NULL, 1, nb, &obj);
    if (!rc) wmat__tensor_own_obj(out, rows, cols, obj);
    return rc;
}

/* ---- files */

static int bs_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const bsobj *o = bs_of(W);
    if (!cJSON_AddNumberToObject(desc, "blocks", o->nb) || !cJSON_AddNumberToObject(desc, "rank", o->k) ||
        !cJSON_AddNumberToObject(desc, "active", o->active))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".bs_sign", WMAT_U8, 2, {(int64_t)o->nb * o->rows, o->sb}, o->sign};
    parts[1] = (wmat_wpart){".bs_u", WMAT_F16, 2, {o->nb, o->rows * o->k}, o->u};
    parts[2] = (wmat_wpart){".bs_v", WMAT_F16, 2, {o->nb, o->k * o->cols}, o->v};
    parts[3] = (wmat_wpart){".bs_pos", WMAT_I32, 1, {o->nb, 0}, o->pos};
    *n_parts = 4;
    return WMAT_OK;
}

static int jint(const cJSON *o, const char *key, double lo, double hi, int *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be an integer in [%g, %g]", what, key, lo, hi);
    *out = (int)d;
    return WMAT_OK;
}

static int bs_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int nb = 0, k = 0, active = 0;
    int rc = jint(desc, "blocks", 1, BS_MAX_BLOCKS, &nb, what);
    if (!rc) rc = jint(desc, "rank", 1, BS_MAX_RANK, &k, what);
    if (!rc) rc = jint(desc, "active", 1, nb, &active, what);
    if (rc) return rc;
    if (!shape_ok(rows, cols, k, nb))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad shape (%lld x %lld, rank %d)", what, (long long)rows,
                              (long long)cols, k);
    const int64_t sb = (cols + 7) / 8;
    const void *sign, *u, *v, *pos;
    rc = get(user, ".bs_sign", WMAT_U8, 2, (int64_t)nb * rows, sb, &sign);
    if (!rc) rc = get(user, ".bs_u", WMAT_F16, 2, nb, rows * k, &u);
    if (!rc) rc = get(user, ".bs_v", WMAT_F16, 2, nb, k * cols, &v);
    if (!rc) rc = get(user, ".bs_pos", WMAT_I32, 1, nb, 0, &pos);
    if (rc) return rc;
    if ((uintptr_t)u % 2 || (uintptr_t)v % 2) return wmat_set_error(WMAT_ERR_FORMAT, "%s: factors are not aligned", what);
    int32_t *p = wmat__malloc((size_t)nb * sizeof(int32_t));
    bsobj *o = wmat__calloc(1, sizeof *o);
    if (!o || !p) {
        wmat__free(o);
        wmat__free(p);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    }
    memcpy(p, pos, (size_t)nb * sizeof(int32_t)); /* possibly unaligned in the file */
    o->obj.kind = &wmat__wkind_bitstack;
    o->rows = rows, o->cols = cols, o->sb = sb, o->k = k, o->nb = nb, o->active = active;
    o->sign = sign, o->u = u, o->v = v;
    rc = finish_obj(o, p, what);
    wmat__free(p);
    if (rc) {
        bs_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_bitstack = {
    .name = "bitstack",
    .summary = "BitStack: a stack of sign matrices times rank-k fp16 magnitudes; any prefix of the stack runs",
    .dtype = WMAT_OBJ,
    .row_align = 1,
    .ws_bytes = bs_ws,
    .forward = bs_forward,
    .backward = bs_backward,
    .prep_bytes = bs_prep_bytes,
    .prepare = bs_prepare,
    .rows = bs_rows,
    .dequant_rows = bs_dequant,
    .nbytes = bs_nbytes,
    .describe = bs_describe,
    .from_f32 = bs_from_f32,
    .row_tol = 1e-4f,
    .approx_tol = 0.3f,
    .free = bs_free,
    .save = bs_save,
    .load = bs_load,
    .gguf_type = bs_gguf_type,
    .stack = bs_stack,
    .set_active = bs_set_active,
};
