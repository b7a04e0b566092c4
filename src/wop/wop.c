/* Helpers over the weight-kind table: threading and buffers for callers that
 * do not manage them (analysis, tests, the trainer's frozen weights), the
 * public accessors, and tensor ownership. */
#include "wop.h"

#include "kern_dense.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

wmat_wexec wmat__wexec_from(const wmat_context *ctx)
{
    wmat_wexec ex = {wmat_context_threads(ctx), wmat__isa_best(), 1, WMAT_GEMM_AUTO};
    if (ex.n_threads < 1) ex.n_threads = 1;
    if (ctx) ex.gemm = ctx->gemm;
    if (ctx && ctx->act8 >= 0) ex.act8 = ctx->act8 != 0;
    else {
        const char *e = getenv("WMAT_QACT8"); /* read, never written: the default for contexts that leave it */
        ex.act8 = !(e && e[0] == '0');
    }
    return ex;
}

void wmat__wop_split(const wmat_wkind *k, int64_t rows, int t, int nt, int64_t *r0, int64_t *r1)
{
    const int64_t a = k->row_align > 0 ? k->row_align : 1;
    int64_t per = (rows + nt - 1) / nt;
    per = (per + a - 1) / a * a;
    *r0 = (int64_t)t * per < rows ? (int64_t)t * per : rows;
    *r1 = *r0 + per < rows ? *r0 + per : rows;
}

static int need(const wmat_tensor *W, const wmat_wkind **k, const char *what)
{
    *k = wmat__wkind_of(W);
    if (!*k) return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not a 2-D weight of a known kind", what, W ? W->name : "(null)");
    return WMAT_OK;
}

/* forward or backward with a workspace of its own. */
static int batched(const wmat_tensor *W, const float *in, float *out, int T, int acc, const wmat_wexec *ex, int bwd)
{
    const char *what = bwd ? "backward" : "forward";
    const wmat_wkind *k;
    int rc = need(W, &k, what);
    if (rc) return rc;
    const size_t ws = k->ws_bytes(W, T, ex);
    void *buf = ws ? wmat__aligned_alloc(ws) : NULL;
    if (ws && !buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %s's workspace", what, W->name);
    (bwd ? k->backward : k->forward)(W, in, out, T, acc, buf, ex);
    wmat__free(buf);
    return WMAT_OK;
}

int wmat__wop_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, const wmat_wexec *ex)
{
    return batched(W, X, Y, T, acc, ex, 0);
}

int wmat__wop_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, const wmat_wexec *ex)
{
    return batched(W, dY, dX, T, acc, ex, 1);
}

void wmat__wop_rows_all(const wmat_wkind *k, const wmat_tensor *W, const float *x, const void *prep, float *y, int acc,
                        const wmat_wexec *ex)
{
    const int64_t rows = W->shape[0];
    const int nt = rows * W->shape[1] >= 65536 ? ex->n_threads : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, n = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        int64_t r0, r1;
        wmat__wop_split(k, rows, t, n, &r0, &r1);
        if (r0 < r1) k->rows(W, x, prep, y, r0, r1, acc, ex);
    }
}

int wmat__wop_matvec(const wmat_tensor *W, const float *x, float *y, int acc, const wmat_wexec *ex)
{
    const wmat_wkind *k;
    int rc = need(W, &k, "matvec");
    if (rc) return rc;
    const size_t pb = k->prep_bytes(W, ex);
    void *prep = pb ? wmat__aligned_alloc(pb) : NULL;
    if (pb && !prep) return wmat_set_error(WMAT_ERR_NOMEM, "matvec: out of memory for %s", W->name);
    if (pb) k->prepare(W, x, prep, ex);
    wmat__wop_rows_all(k, W, x, prep, y, acc, ex);
    wmat__free(prep);
    return WMAT_OK;
}

void wmat__tensor_free_data(wmat_tensor *t)
{
    if (!(t->flags & WMAT_TF_OWNED) || !t->data) return;
    if (t->dtype == WMAT_OBJ) {
        const wmat_wkind *k = ((const wmat_wobj *)t->data)->kind;
        if (k && k->free) {
            k->free(t->data);
            t->data = NULL;
            return;
        }
    }
    wmat__free(t->data);
    t->data = NULL;
}

void wmat__tensor_set_obj(wmat_tensor *t, void *obj)
{
    wmat__tensor_free_data(t);
    const wmat_wkind *k = ((const wmat_wobj *)obj)->kind;
    t->data = obj;
    t->dtype = WMAT_OBJ;
    t->flags = WMAT_TF_OWNED;
    t->nbytes = (size_t)k->nbytes(t);
}

/* ---- public */

int wmat_weight_kind_count(void) { return wmat__wkind_count(); }

const char *wmat_weight_kind_name(int i, const char **summary)
{
    const wmat_wkind *k = wmat__wkind_at(i);
    if (summary) *summary = k ? k->summary : NULL;
    return k ? k->name : NULL;
}

const char *wmat_tensor_kind(const wmat_tensor *t)
{
    const wmat_wkind *k = wmat__wkind_of(t);
    return k ? k->name : NULL;
}

int wmat_tensor_dequant_rows(const wmat_tensor *t, int64_t r0, int64_t nr, float *out)
{
    const wmat_wkind *k;
    int rc = need(t, &k, "dequantize");
    if (rc) return rc;
    if (r0 < 0 || nr < 0 || r0 + nr > t->shape[0])
        return wmat_set_error(WMAT_ERR_INVALID, "dequantize: rows %lld..%lld outside tensor %s (%lld rows)", (long long)r0,
                              (long long)(r0 + nr), t->name, (long long)t->shape[0]);
    if (nr) k->dequant_rows(t, r0, nr, out);
    return WMAT_OK;
}

double wmat_tensor_bits_per_weight(const wmat_tensor *t)
{
    const wmat_wkind *k = wmat__wkind_of(t);
    if (!k) return 0.0;
    return 8.0 * (double)k->nbytes(t) / ((double)t->shape[0] * (double)t->shape[1]);
}

void wmat_tensor_describe(const wmat_tensor *t, char *buf, size_t n)
{
    const wmat_wkind *k = wmat__wkind_of(t);
    if (!n) return;
    if (!k) {
        const wmat_dtype_traits *tr = wmat_dtype_info(t->dtype);
        snprintf(buf, n, "%s", tr ? tr->name : "?");
    } else if (k->describe) {
        k->describe(t, buf, n);
    } else {
        snprintf(buf, n, "%s", k->name);
    }
}

void wmat__tensor_init2(wmat_tensor *t, wmat_dtype dt, int64_t rows, int64_t cols, void *data)
{
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = data;
    t->nbytes = dt == WMAT_OBJ ? 0 : wmat_dtype_bytes(dt, (uint64_t)rows * (uint64_t)cols);
}

void wmat__tensor_own_obj(wmat_tensor *t, int64_t rows, int64_t cols, void *obj)
{
    wmat__tensor_init2(t, WMAT_OBJ, rows, cols, obj);
    t->flags = WMAT_TF_OWNED;
    t->nbytes = (size_t)((const wmat_wobj *)obj)->kind->nbytes(t);
}

int wmat__wkind_plain_from_f32(wmat_dtype dt, const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    /* each row whole blocks: kernels and files address rows by block */
    const size_t bytes = cols % wmat_dtype_info(dt)->block_size ? 0 : wmat_dtype_bytes(dt, (uint64_t)rows * (uint64_t)cols);
    if (!bytes)
        return wmat_set_error(WMAT_ERR_INVALID, "a (%lld x %lld) matrix does not fit %s blocks", (long long)rows,
                              (long long)cols, wmat_dtype_info(dt)->name);
    void *d = wmat__aligned_alloc(bytes);
    if (!d) return wmat_set_error(WMAT_ERR_NOMEM, "out of memory for a %s matrix", wmat_dtype_info(dt)->name);
    int rc = wmat_from_f32(d, dt, W, (uint64_t)rows * (uint64_t)cols);
    if (rc) {
        wmat__free(d);
        return rc;
    }
    wmat__tensor_init2(out, dt, rows, cols, d);
    out->flags = WMAT_TF_OWNED;
    return WMAT_OK;
}

float wmat__wkind_batch_tol(const wmat_wkind *k, const wmat_wexec *ex)
{
    return k->batch_tol ? k->batch_tol(ex) : 1e-5f;
}
