/* wmat's packed quantized weights (2..8-bit codes, fp16 scales, optional
 * zero points and act-order permutation; layout in src/wop/qstore.h) as
 * a weight kind: the packed kernels of qkernels.c run them directly. */
#include "wop.h"

#include "linalg/linalg.h"
#include "kern_dense.h"
#include "qstore.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define QP_TILE_FLOATS ((size_t)1 << 20) /* backward: W rows dequantized ~4 MB at a time */

static const wmat_qtensor *qt_of(const wmat_tensor *W) { return (const wmat_qtensor *)W->data; }

static int64_t bwd_tile(const wmat_qtensor *qt)
{
    int64_t tile = (int64_t)(QP_TILE_FLOATS / (size_t)qt->cols);
    if (tile < 16) tile = 16;
    return tile > qt->rows ? qt->rows : tile;
}

static size_t qp_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)T, (void)ex;
    const wmat_qtensor *qt = qt_of(W);
    return (size_t)bwd_tile(qt) * (size_t)qt->cols * sizeof(float);
}

static void qp_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    (void)ws;
    wmat__qmatmul_x(Y, X, qt_of(W), T, acc, ex->n_threads, ex->isa, ex->act8, ex->gemm);
}

/* dX = dY W, a tile of W's rows at a time: dX += dY[:, tile] W[tile, :]. */
static void qp_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const wmat_qtensor *qt = qt_of(W);
    const int64_t rows = qt->rows, cols = qt->cols, tile = bwd_tile(qt);
    float *Wt = ws;
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t nr = rows - r0 < tile ? rows - r0 : tile;
        wmat_qtensor_dequant_rows(qt, r0, nr, Wt);
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)cols, (int)nr, 1.0f, dY + r0, (int)rows, Wt, (int)cols,
                        (acc || r0 > 0) ? 1.0f : 0.0f, dX, (int)cols);
    }
}

/* Symmetric 4-bit codes in groups of 32 inputs without a permutation are
 * Q4_0's nibbles with the scales stored apart: on AVX2 (whose packed
 * kernels have no int8 path; AVX-512 VNNI has its own) they take the q4_0
 * kind's int8-activation row kernel, x quantized once per product. */
static int q4s_path(const wmat_qtensor *qt, const wmat_wexec *ex)
{
    return ex->act8 && ex->isa == WMAT_ISA_AVX2 && qt->bits == 4 && qt->sym && qt->axis == WMAT_QAXIS_IN &&
           qt->group == 32 && !qt->perm;
}

static size_t qp_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    const wmat_qtensor *qt = qt_of(W);
    return q4s_path(qt, ex) ? wmat__wrow_prep_bytes(WMAT_Q4_0, qt->cols) : 0;
}

static void qp_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const wmat_qtensor *qt = qt_of(W);
    if (q4s_path(qt, ex)) wmat__wrow_prepare(WMAT_Q4_0, x, qt->cols, prep, ex->isa);
}

static void qp_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    const wmat_qtensor *qt = qt_of(W);
    if (q4s_path(qt, ex)) wmat__q4s_rows(qt->codes, (size_t)qt->row_bytes, qt->scales, qt->cols, prep, y, r0, r1, acc, ex->isa);
    else wmat__qmatvec_rows_x(y, x, qt, r0, r1, acc, ex->isa, ex->act8);
}

static void qp_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    wmat_qtensor_dequant_rows(qt_of(W), r0, nr, out);
}

static uint64_t qp_nbytes(const wmat_tensor *W) { return wmat_qtensor_nbytes(qt_of(W)); }

static void qp_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const wmat_qtensor *qt = qt_of(W);
    snprintf(buf, n, "qpacked %db %s g%d along %s%s", qt->bits, qt->sym ? "sym" : "asym", qt->group,
             qt->axis == WMAT_QAXIS_IN ? "inputs" : "outputs", qt->perm ? " act-order" : "");
}

static void qp_free(void *obj) { wmat_qtensor_free(obj); }

/* 4-bit symmetric round-to-nearest, groups of 32 inputs (Q4_0's grid; a
 * width that 32 does not divide is not packable). */
static int qp_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    wmat_qresult q;
    int rc = wmat_qresult_alloc(&q, 4, 1, WMAT_QAXIS_IN, 32, rows, cols, 0);
    if (rc) return rc;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols / 32; g++) {
            const float *w = W + r * cols + g * 32;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fabsf(w[j]) > amax ? fabsf(w[j]) : amax;
            const float s = wmat_f16_to_f32(wmat_f32_to_f16(amax / 7.0f)), inv = s > 0 ? 1.0f / s : 0.0f;
            q.scales[r * (cols / 32) + g] = s;
            q.zeros[r * (cols / 32) + g] = 8.0f;
            for (int j = 0; j < 32; j++) {
                float c = roundf(w[j] * inv) + 8.0f;
                q.codes[r * cols + g * 32 + j] = (uint8_t)(c < 0 ? 0 : c > 15 ? 15 : c);
            }
        }
    wmat_qtensor *qt = NULL;
    rc = wmat_qtensor_pack(&q, &qt);
    wmat_qresult_free(&q);
    if (rc) return rc;
    wmat__tensor_own_obj(out, rows, cols, qt);
    return WMAT_OK;
}

/* ---- files: the scheme in the description, four parts (docs/FORMATS.md) */

static const char *const g_suffix[4] = {".qcodes", ".qscales", ".qzeros", ".qperm"};

static int qp_save(const wmat_tensor *W, cJSON *o, wmat_wpart *parts, int *n_parts, const char *what)
{
    const wmat_qtensor *qt = qt_of(W);
    if (!cJSON_AddNumberToObject(o, "bits", qt->bits) || !cJSON_AddBoolToObject(o, "sym", qt->sym) ||
        !cJSON_AddStringToObject(o, "axis", qt->axis == WMAT_QAXIS_IN ? "in" : "out") ||
        !cJSON_AddNumberToObject(o, "group", qt->group) || !cJSON_AddBoolToObject(o, "act_order", qt->perm != NULL) ||
        !cJSON_AddNumberToObject(o, "chunk_bytes", (double)qt->chunk_bytes))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    const int64_t gd0 = qt->axis == WMAT_QAXIS_IN ? qt->rows : qt->cols, gd1 = qt->n_groups / gd0;
    int n = 0;
    parts[n++] = (wmat_wpart){g_suffix[0], WMAT_U8, 2, {qt->rows, qt->row_bytes}, qt->codes};
    parts[n++] = (wmat_wpart){g_suffix[1], WMAT_F16, 2, {gd0, gd1}, qt->scales};
    if (qt->zeros) parts[n++] = (wmat_wpart){g_suffix[2], WMAT_U8, 2, {gd0, gd1}, qt->zeros};
    if (qt->perm) parts[n++] = (wmat_wpart){g_suffix[3], WMAT_I32, 1, {qt->cols, 0}, qt->perm};
    *n_parts = n;
    return WMAT_OK;
}

/* An integer field in [lo, hi]. */
static int jint(const cJSON *o, const char *key, double lo, double hi, int64_t *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: field \"%s\" must be an integer in [%g, %g]", what, key, lo, hi);
    *out = (int64_t)d;
    return WMAT_OK;
}

static int qp_load(const cJSON *item, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int64_t bits = 0, group = 0;
    int rc = jint(item, "bits", 2, 8, &bits, what);
    if (!rc) rc = jint(item, "group", 1, INT32_MAX, &group, what);
    if (rc) return rc;
    const cJSON *axis = cJSON_GetObjectItemCaseSensitive(item, "axis");
    const cJSON *sym = cJSON_GetObjectItemCaseSensitive(item, "sym");
    const cJSON *ao = cJSON_GetObjectItemCaseSensitive(item, "act_order");
    if (!cJSON_IsString(axis) || (strcmp(axis->valuestring, "in") && strcmp(axis->valuestring, "out")) || !cJSON_IsBool(sym))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"axis\" must be \"in\" or \"out\" and \"sym\" a boolean", what);
    if (ao && !cJSON_IsBool(ao)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"act_order\" must be a boolean", what);
    wmat_qtensor s;
    memset(&s, 0, sizeof s);
    s.obj.kind = &wmat__wkind_qpacked;
    s.bits = (int)bits;
    s.sym = cJSON_IsTrue(sym);
    s.axis = strcmp(axis->valuestring, "in") ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
    s.group = (int)group;
    s.rows = rows;
    s.cols = cols;
    const int64_t len = s.axis == WMAT_QAXIS_IN ? cols : rows;
    if (cols % 32 || len % group || (s.axis == WMAT_QAXIS_IN && group % 32))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: group %lld along %s does not fit a (%lld x %lld) matrix", what,
                              (long long)group, axis->valuestring, (long long)rows, (long long)cols);
    s.n_groups = s.axis == WMAT_QAXIS_IN ? rows * (cols / group) : cols * (rows / group);
    s.chunk_bytes = wmat_qpack_chunk_bytes(s.bits);
    s.row_bytes = cols / 32 * s.chunk_bytes;
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(item, "chunk_bytes");
    if (cb && (!cJSON_IsNumber(cb) || cb->valuedouble != (double)s.chunk_bytes))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"chunk_bytes\" must be %lld for %d-bit codes", what,
                              (long long)s.chunk_bytes, s.bits);
    const int64_t gd0 = s.axis == WMAT_QAXIS_IN ? rows : cols, gd1 = s.n_groups / gd0;
    const void *tc, *ts, *tz = NULL, *tp = NULL;
    rc = get(user, g_suffix[0], WMAT_U8, 2, rows, s.row_bytes, &tc);
    if (!rc) rc = get(user, g_suffix[1], WMAT_F16, 2, gd0, gd1, &ts);
    if (!rc && !s.sym) rc = get(user, g_suffix[2], WMAT_U8, 2, gd0, gd1, &tz);
    if (!rc && cJSON_IsTrue(ao)) rc = get(user, g_suffix[3], WMAT_I32, 1, cols, 0, &tp);
    if (rc) return rc;
    if (((uintptr_t)ts % 2) || (tp && (uintptr_t)tp % 4))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: scales or perm are not aligned to their element size", what);
    s.codes = tc;
    s.scales = ts;
    s.zeros = tz;
    s.perm = tp;
    if (s.perm) { /* a hostile perm would index outside x: check it is a permutation */
        uint8_t *seen = wmat__calloc((size_t)cols, 1);
        if (!seen) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        for (int64_t k = 0; k < cols && !rc; k++) {
            const int32_t p = s.perm[k];
            if (p < 0 || p >= cols || seen[p]) rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: perm is not a permutation", what);
            else seen[p] = 1;
        }
        wmat__free(seen);
        if (rc) return rc;
    }
    wmat_qtensor *qt = wmat__malloc(sizeof *qt);
    if (!qt) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    *qt = s;
    *obj = qt;
    return WMAT_OK;
}

/* Exactly a ggml type: symmetric 4- or 8-bit codes in groups of 32 inputs,
 * no column permutation (Q4_0's nibble order is the 4-bit chunk's). */
static int qp_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    const wmat_qtensor *qt = qt_of(W);
    *why = "";
    if (qt->bits != 4 && qt->bits != 8) *why = "only 4-bit (Q4_0) and 8-bit (Q8_0) codes have an exact ggml type";
    else if (!qt->sym) *why = "asymmetric (zero points): Q4_0/Q8_0 are symmetric";
    else if (qt->axis != WMAT_QAXIS_IN) *why = "groups along outputs (per-IC): ggml blocks run along inputs";
    else if (qt->group != 32) *why = "groups must be 32 inputs long (ggml's block)";
    else if (qt->perm)
        for (int64_t k = 0; k < qt->cols && !**why; k++)
            if (qt->perm[k] != k) *why = "act-order permutation with groups: ggml has no column permutation";
    if (**why) return 0;
    *dt = qt->bits == 4 ? WMAT_Q4_0 : WMAT_Q8_0;
    return 1;
}

static void qp_gguf_encode(const wmat_tensor *W, void *dst)
{
    const wmat_qtensor *qt = qt_of(W);
    unsigned char *o = dst;
    const int64_t nb = qt->cols / 32;
    for (int64_t r = 0; r < qt->rows; r++) {
        const uint8_t *src = qt->codes + r * qt->row_bytes;
        for (int64_t b = 0; b < nb; b++, src += qt->chunk_bytes) {
            memcpy(o, &qt->scales[r * nb + b], 2); /* fp16 scale bits as stored */
            if (qt->bits == 4) {
                memcpy(o + 2, src, 16); /* the 4-bit chunk is Q4_0's qs: c_j | c_(j+16) << 4 */
                o += 18;
            } else {
                for (int j = 0; j < 32; j++) o[2 + j] = (unsigned char)(int8_t)((int)src[j] - 128);
                o += 34;
            }
        }
    }
}

/* Fewer than 3 tokens run as one-row products (wmat__qmatmul_x), with
 * int8 activations where those are on: the row budget then; else exact. */
static float qp_batch_tol(const wmat_wexec *ex)
{
    return wmat__qkernel_act8_at(ex->isa, ex->act8) ? 2e-2f : 1e-5f;
}

const wmat_wkind wmat__wkind_qpacked = {
    .name = "qpacked",
    .summary = "wmat's packed 2..8-bit codes with fp16 group scales (RTN, GPTQ, AdaDim output)",
    .dtype = WMAT_OBJ,
    .row_align = 16,
    .ws_bytes = qp_ws,
    .forward = qp_forward,
    .backward = qp_backward,
    .prep_bytes = qp_prep_bytes,
    .prepare = qp_prepare,
    .rows = qp_rows,
    .dequant_rows = qp_dequant,
    .nbytes = qp_nbytes,
    .describe = qp_describe,
    .free = qp_free,
    .from_f32 = qp_from_f32,
    .save = qp_save,
    .load = qp_load,
    .gguf_type = qp_gguf_type,
    .gguf_encode = qp_gguf_encode,
    .row_tol = 2e-2f, /* int8 activations where the CPU has VNNI */
    .batch_tol = qp_batch_tol,
};
