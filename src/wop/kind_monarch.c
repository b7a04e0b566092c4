/* Monarch weights (Dao et al. 2022): W (m, n) = P2 B2 P1 B1, two
 * block-diagonal factors with a fixed interleaving between them.
 *
 * With R input blocks of width S = n / R, Q output blocks (P = m / Q rows
 * each, output rows interleaved) and slab rank K:
 *   h[j, r, u]   = sum_s w1[r, j, u, s] x[r S + s]         (block r of B1: Q K x S)
 *   y[p Q + j]   = sum_{r, u} w2[j, p, r, u] h[j, r, u]    (block j of B2: P x R K)
 * so slab (j, r) of W (rows p Q + j, columns r S + s: P x S) is
 * sum_u w2[j, :, r, u] w1[r, j, u, :], of rank K. K = 1 is the Monarch
 * class of the paper (square blocks of sqrt(n) give 2 n sqrt(n)
 * parameters); a larger K is its block-low-rank extension, and
 * K = min(P, S) holds any matrix. The best approximation in the Frobenius
 * norm is one rank-K SVD per slab (src/decomp/monarch.c). Storage:
 * K (Q n + R m) floats instead of m n. */
#include "wop.h"

#include "kern_f32.h"

#include "../linalg/linalg.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    wmat_wobj obj;
    int64_t m, n, R, Q, P, S, K;
    const float *w1; /* (R, Q, K, S): block r of B1 is (Q K) x S */
    const float *w2; /* (Q, P, R, K): block j of B2 is P x (R K) */
    void *own;
} monarch;

static const monarch *mo_of(const wmat_tensor *W) { return (const monarch *)W->data; }
static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }
static size_t inner(const monarch *mo) { return (size_t)(mo->R * mo->Q * mo->K); }

/* ws: H (T, R, Q, K), H2 (T, Q, R, K), Z (T, Q, P) */
static size_t mo_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)ex;
    const monarch *mo = mo_of(W);
    const size_t t = (size_t)(T > 0 ? T : 0);
    return 2 * al64(t * inner(mo) * sizeof(float)) + al64(t * (size_t)mo->m * sizeof(float)) + 64;
}

static float *ws_at(void *ws, size_t off) { return (float *)(((uintptr_t)ws + 63) & ~(uintptr_t)63) + off / sizeof(float); }

/* a (T, A, B, K) -> b (T, B, A, K), moving K-float units */
static void swap_inner(const float *a, float *b, int T, int64_t A, int64_t B, int64_t K)
{
    const size_t tile = (size_t)(A * B * K);
    for (int t = 0; t < T; t++) {
        const float *at = a + (size_t)t * tile;
        float *bt = b + (size_t)t * tile;
        for (int64_t i = 0; i < A; i++)
            for (int64_t k = 0; k < B; k++) memcpy(bt + (k * A + i) * K, at + (i * B + k) * K, (size_t)K * sizeof(float));
    }
}

static void mo_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const monarch *mo = mo_of(W);
    if (T <= 0) return;
    const int64_t R = mo->R, Q = mo->Q, P = mo->P, S = mo->S, K = mo->K, QK = Q * K, RK = R * K;
    const size_t hb = al64((size_t)T * inner(mo) * sizeof(float));
    float *H = ws_at(ws, 0), *H2 = ws_at(ws, hb), *Z = ws_at(ws, 2 * hb);
    for (int64_t r = 0; r < R; r++)
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 1, T, (int)QK, (int)S, 1.0f, X + r * S, (int)mo->n, mo->w1 + r * QK * S,
                        (int)S, 0.0f, H + r * QK, (int)(R * QK));
    swap_inner(H, H2, T, R, Q, K);
    for (int64_t j = 0; j < Q; j++)
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 1, T, (int)P, (int)RK, 1.0f, H2 + j * RK, (int)(Q * RK),
                        mo->w2 + j * P * RK, (int)RK, 0.0f, Z + j * P, (int)(Q * P));
    /* Z (T, Q, P) holds y[p Q + j] at [j, p] */
    for (int t = 0; t < T; t++) {
        float *y = Y + (size_t)t * (size_t)mo->m;
        const float *z = Z + (size_t)t * (size_t)mo->m;
        for (int64_t j = 0; j < Q; j++)
            for (int64_t p = 0; p < P; p++) y[p * Q + j] = (acc ? y[p * Q + j] : 0.0f) + z[j * P + p];
    }
}

/* dX = dY W: the transposed steps in reverse order */
static void mo_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const monarch *mo = mo_of(W);
    if (T <= 0) return;
    const int64_t R = mo->R, Q = mo->Q, P = mo->P, S = mo->S, K = mo->K, QK = Q * K, RK = R * K;
    const size_t hb = al64((size_t)T * inner(mo) * sizeof(float));
    float *H = ws_at(ws, 0), *H2 = ws_at(ws, hb), *Z = ws_at(ws, 2 * hb);
    for (int t = 0; t < T; t++) {
        const float *g = dY + (size_t)t * (size_t)mo->m;
        float *z = Z + (size_t)t * (size_t)mo->m;
        for (int64_t j = 0; j < Q; j++)
            for (int64_t p = 0; p < P; p++) z[j * P + p] = g[p * Q + j];
    }
    for (int64_t j = 0; j < Q; j++)
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)RK, (int)P, 1.0f, Z + j * P, (int)(Q * P), mo->w2 + j * P * RK,
                        (int)RK, 0.0f, H2 + j * RK, (int)(Q * RK));
    swap_inner(H2, H, T, Q, R, K);
    for (int64_t r = 0; r < R; r++)
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)S, (int)QK, 1.0f, H + r * QK, (int)(R * QK),
                        mo->w1 + r * QK * S, (int)S, acc ? 1.0f : 0.0f, dX + r * S, (int)mo->n);
}

/* prep: h2 (Q, R, K), the first factor's output every row needs, and h
 * (R, Q, K) on the way to it */
static size_t mo_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    return 2 * inner(mo_of(W)) * sizeof(float);
}

/* Runs outside parallel regions (as the low-rank kind's B x): B1's blocks
 * are split over the threads here, B2's rows by the caller. */
static void mo_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const monarch *mo = mo_of(W);
    float *h2 = prep, *h = h2 + inner(mo);
    const int64_t QK = mo->Q * mo->K;
    const int nt = ex->n_threads > 1 && mo->R > 1 ? (ex->n_threads < mo->R ? ex->n_threads : (int)mo->R) : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < mo->R; r++)
        wmat__f32_rows(h + r * QK, mo->w1 + r * QK * mo->S, x + r * mo->S, 0, (int)QK, (int)mo->S, 0, ex->isa);
    swap_inner(h, h2, 1, mo->R, mo->Q, mo->K);
}

static void mo_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x, (void)ex;
    const monarch *mo = mo_of(W);
    const float *h2 = prep;
    const int64_t RK = mo->R * mo->K;
    for (int64_t i = r0; i < r1; i++) {
        const int64_t p = i / mo->Q, j = i % mo->Q;
        const float s = wmat__dot(mo->w2 + (j * mo->P + p) * RK, h2 + j * RK, (int)RK);
        y[i] = acc ? y[i] + s : s;
    }
}

static void mo_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const monarch *mo = mo_of(W);
    for (int64_t i = 0; i < nr; i++) {
        const int64_t row = r0 + i, p = row / mo->Q, j = row % mo->Q;
        float *o = out + i * mo->n;
        memset(o, 0, (size_t)mo->n * sizeof(float));
        for (int64_t r = 0; r < mo->R; r++)
            for (int64_t u = 0; u < mo->K; u++) {
                const float a = mo->w2[((j * mo->P + p) * mo->R + r) * mo->K + u];
                const float *b = mo->w1 + ((r * mo->Q + j) * mo->K + u) * mo->S;
                for (int64_t s = 0; s < mo->S; s++) o[r * mo->S + s] += a * b[s];
            }
    }
}

static uint64_t mo_nbytes(const wmat_tensor *W)
{
    const monarch *mo = mo_of(W);
    return (uint64_t)(mo->K * (mo->Q * mo->n + mo->R * mo->m)) * sizeof(float);
}

static void mo_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const monarch *mo = mo_of(W);
    snprintf(buf, n, "monarch %lld in x %lld out blocks, slab rank %lld, f32", (long long)mo->R, (long long)mo->Q,
             (long long)mo->K);
}

static void mo_free(void *obj)
{
    monarch *mo = obj;
    if (!mo) return;
    wmat__free(mo->own);
    wmat__free(mo);
}

static int check_shape(int64_t m, int64_t n, int64_t R, int64_t Q, int64_t K, const char *what)
{
    if (m < 1 || n < 1 || R < 1 || Q < 1 || R > n || Q > m || n % R || m % Q)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "%s: %lld input and %lld output blocks do not divide a (%lld x %lld) matrix", what,
                              (long long)R, (long long)Q, (long long)m, (long long)n);
    const int64_t kmax = m / Q < n / R ? m / Q : n / R;
    if (K < 1 || K > kmax)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: slab rank %lld outside 1..%lld", what, (long long)K, (long long)kmax);
    if (K * (n / R) * Q > INT32_MAX || (m / Q) * R * K > INT32_MAX || R * Q * K > INT32_MAX)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: blocks too large", what);
    return WMAT_OK;
}

static monarch *mo_new(int64_t m, int64_t n, int64_t R, int64_t Q, int64_t K)
{
    extern const wmat_wkind wmat__wkind_monarch;
    monarch *mo = wmat__calloc(1, sizeof *mo);
    if (!mo) return NULL;
    mo->obj.kind = &wmat__wkind_monarch;
    mo->m = m, mo->n = n, mo->R = R, mo->Q = Q, mo->P = m / Q, mo->S = n / R, mo->K = K;
    return mo;
}

int wmat__monarch_create(int64_t rows, int64_t cols, int64_t in_blocks, int64_t out_blocks, int64_t slab_rank,
                         const float *w1, const float *w2, void **out)
{
    *out = NULL;
    int rc = check_shape(rows, cols, in_blocks, out_blocks, slab_rank, "monarch");
    if (rc) return rc;
    monarch *mo = mo_new(rows, cols, in_blocks, out_blocks, slab_rank);
    const size_t n1 = (size_t)(out_blocks * slab_rank * cols), n2 = (size_t)(in_blocks * slab_rank * rows);
    float *buf = wmat__aligned_alloc(al64(n1 * sizeof(float)) + n2 * sizeof(float));
    if (!mo || !buf) {
        wmat__free(mo);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "monarch: out of memory for (%lld x %lld) factors", (long long)rows,
                              (long long)cols);
    }
    float *b2 = (float *)((char *)buf + al64(n1 * sizeof(float)));
    memcpy(buf, w1, n1 * sizeof(float));
    memcpy(b2, w2, n2 * sizeof(float));
    mo->w1 = buf, mo->w2 = b2, mo->own = buf;
    *out = mo;
    return WMAT_OK;
}

void wmat__monarch_shape(const wmat_tensor *W, int64_t *in_blocks, int64_t *out_blocks, int64_t *slab_rank)
{
    const monarch *mo = mo_of(W);
    *in_blocks = mo->R, *out_blocks = mo->Q, *slab_rank = mo->K;
}

static int mo_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const monarch *mo = mo_of(W);
    if (!cJSON_AddNumberToObject(desc, "in_blocks", (double)mo->R) ||
        !cJSON_AddNumberToObject(desc, "out_blocks", (double)mo->Q) ||
        !cJSON_AddNumberToObject(desc, "slab_rank", (double)mo->K))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".mo_w1", WMAT_F32, 2, {mo->R * mo->Q * mo->K, mo->S}, mo->w1};
    parts[1] = (wmat_wpart){".mo_w2", WMAT_F32, 2, {mo->Q * mo->P, mo->R * mo->K}, mo->w2};
    *n_parts = 2;
    return WMAT_OK;
}

static int count_field(const cJSON *desc, const char *key, int64_t max, const char *what, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(desc, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= (double)max) ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be an integer in 1..%lld", what, key, (long long)max);
    *out = (int64_t)v->valuedouble;
    return WMAT_OK;
}

static int mo_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get_part, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int64_t R, Q, K;
    int rc = count_field(desc, "in_blocks", cols, what, &R);
    if (!rc) rc = count_field(desc, "out_blocks", rows, what, &Q);
    if (!rc) rc = count_field(desc, "slab_rank", rows < cols ? rows : cols, what, &K);
    if (!rc && (cols % R || rows % Q))
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: %lld input / %lld output blocks do not divide (%lld x %lld)", what,
                            (long long)R, (long long)Q, (long long)rows, (long long)cols);
    if (!rc && check_shape(rows, cols, R, Q, K, what))
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: %s", what, wmat_last_error());
    const void *a = NULL, *b = NULL;
    if (!rc) rc = get_part(user, ".mo_w1", WMAT_F32, 2, R * Q * K, cols / R, &a);
    if (!rc) rc = get_part(user, ".mo_w2", WMAT_F32, 2, Q * (rows / Q), R * K, &b);
    if (rc) return rc;
    if ((uintptr_t)a % 4 || (uintptr_t)b % 4)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: factors are not aligned to 4 bytes", what);
    monarch *mo = mo_new(rows, cols, R, Q, K);
    if (!mo) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    mo->w1 = a, mo->w2 = b;
    *obj = mo;
    return WMAT_OK;
}

/* The largest divisor of n that is at most cap. */
static int64_t divisor_upto(int64_t n, int64_t cap)
{
    for (int64_t d = n < cap ? n : cap; d > 1; d--)
        if (n % d == 0) return d;
    return 1;
}

/* The exact Monarch form of any W: up to 4 blocks each way and full slab
 * rank K = min(P, S), each slab factored as (its rows) x (identity), so
 * every path of the interleaving runs with general blocks. What the
 * conformance suite holds to its budgets; compression is the decomposition
 * method's projection (src/decomp/monarch.c) at a lower slab rank. */
static int mo_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int64_t R = divisor_upto(cols, 4), Q = divisor_upto(rows, 4), P = rows / Q, S = cols / R;
    const int64_t K = P < S ? P : S;
    float *w1 = wmat__calloc((size_t)(Q * K * cols), sizeof(float)), *w2 = wmat__calloc((size_t)(R * K * rows), sizeof(float));
    int rc = WMAT_OK;
    if (!w1 || !w2) rc = wmat_set_error(WMAT_ERR_NOMEM, "monarch: out of memory");
    /* slab (j, r) = A (P x S); K = S: A = A I (w2 = A, w1 = I); K = P: A = I A */
    for (int64_t j = 0; !rc && j < Q; j++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t u = 0; u < K; u++) {
                float *v = w1 + ((r * Q + j) * K + u) * S;
                for (int64_t p = 0; p < P; p++) {
                    float *a = &w2[((j * P + p) * R + r) * K + u];
                    if (K == S) *a = W[(p * Q + j) * cols + r * S + u];
                    else *a = p == u ? 1.0f : 0.0f;
                }
                if (K == S) v[u] = 1.0f;
                else memcpy(v, W + (u * Q + j) * cols + r * S, (size_t)S * sizeof(float));
            }
    void *obj = NULL;
    if (!rc) rc = wmat__monarch_create(rows, cols, R, Q, K, w1, w2, &obj);
    wmat__free(w1);
    wmat__free(w2);
    if (rc) return rc;
    wmat__tensor_own_obj(out, rows, cols, obj);
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_monarch = {
    .name = "monarch",
    .summary = "Monarch product of two block-diagonal f32 factors with an interleaving: K (Q n + R m) parameters",
    .dtype = WMAT_OBJ,
    .row_align = 1,
    .ws_bytes = mo_ws,
    .forward = mo_forward,
    .backward = mo_backward,
    .prep_bytes = mo_prep_bytes,
    .prepare = mo_prepare,
    .rows = mo_rows,
    .dequant_rows = mo_dequant,
    .nbytes = mo_nbytes,
    .describe = mo_describe,
    .free = mo_free,
    .save = mo_save,
    .load = mo_load,
    .from_f32 = mo_from_f32,
    .row_tol = 1e-5f,
};
