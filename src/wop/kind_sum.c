/* Sums of two weights, W = A + B, each of any registered kind: a quantized
 * matrix plus a low-rank correction (LQ-LoRA, QLoRA-style merges), a sparse
 * matrix plus a low-rank one (SLTrain, sparse + low-rank), ... Every path is
 * the two parts' own path, the second accumulating onto the first, so the
 * parts run their own kernels. */
#include "wop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

extern const wmat_wkind wmat__wkind_sum;

typedef struct {
    wmat_wobj obj;
    wmat_tensor part[2];
    char suffix[2][WMAT_WPART_MAX][32]; /* ".a.qcodes", ...: what save() hands out */
} sumw;

static const char *const k_tag[2] = {"a", "b"};

static const sumw *sum_of(const wmat_tensor *W) { return (const sumw *)W->data; }
static const wmat_wkind *kind_at(const sumw *s, int i) { return wmat__wkind_of(&s->part[i]); }
static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t sum_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    const size_t a = kind_at(s, 0)->ws_bytes(&s->part[0], T, ex), b = kind_at(s, 1)->ws_bytes(&s->part[1], T, ex);
    return a > b ? a : b;
}

static void sum_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    kind_at(s, 0)->forward(&s->part[0], X, Y, T, acc, ws, ex);
    kind_at(s, 1)->forward(&s->part[1], X, Y, T, 1, ws, ex);
}

static void sum_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    kind_at(s, 0)->backward(&s->part[0], dY, dX, T, acc, ws, ex);
    kind_at(s, 1)->backward(&s->part[1], dY, dX, T, 1, ws, ex);
}

static size_t sum_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    return al64(kind_at(s, 0)->prep_bytes(&s->part[0], ex)) + kind_at(s, 1)->prep_bytes(&s->part[1], ex);
}

static void sum_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    const size_t pa = al64(kind_at(s, 0)->prep_bytes(&s->part[0], ex));
    for (int i = 0; i < 2; i++) {
        const wmat_wkind *k = kind_at(s, i);
        if (k->prep_bytes(&s->part[i], ex)) k->prepare(&s->part[i], x, (char *)prep + (i ? pa : 0), ex);
    }
}

static void sum_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                     const wmat_wexec *ex)
{
    const sumw *s = sum_of(W);
    const size_t pa = al64(kind_at(s, 0)->prep_bytes(&s->part[0], ex));
    kind_at(s, 0)->rows(&s->part[0], x, prep, y, r0, r1, acc, ex);
    kind_at(s, 1)->rows(&s->part[1], x, (const char *)prep + pa, y, r0, r1, 1, ex);
}

/* An inspection path, not a kernel: one row of B at a time in a buffer of
 * its own; if that cannot be had the rows come back NaN (never silently A). */
static void sum_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const sumw *s = sum_of(W);
    const int64_t cols = W->shape[1];
    kind_at(s, 0)->dequant_rows(&s->part[0], r0, nr, out);
    float *row = wmat__malloc((size_t)cols * sizeof(float));
    for (int64_t i = 0; i < nr; i++) {
        float *o = out + i * cols;
        if (!row) {
            for (int64_t c = 0; c < cols; c++) o[c] = NAN;
            continue;
        }
        kind_at(s, 1)->dequant_rows(&s->part[1], r0 + i, 1, row);
        for (int64_t c = 0; c < cols; c++) o[c] += row[c];
    }
    wmat__free(row);
}

static uint64_t sum_nbytes(const wmat_tensor *W)
{
    const sumw *s = sum_of(W);
    return kind_at(s, 0)->nbytes(&s->part[0]) + kind_at(s, 1)->nbytes(&s->part[1]);
}

static void describe_part(const sumw *s, int i, char *buf, size_t n)
{
    const wmat_wkind *k = kind_at(s, i);
    if (k->describe) k->describe(&s->part[i], buf, n);
    else snprintf(buf, n, "%s", k->name);
}

static void sum_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const sumw *s = sum_of(W);
    char a[96], b[96];
    describe_part(s, 0, a, sizeof a);
    describe_part(s, 1, b, sizeof b);
    snprintf(buf, n, "%s + %s", a, b);
}

static void sum_free(void *obj)
{
    sumw *s = obj;
    if (!s) return;
    wmat__tensor_free_data(&s->part[0]);
    wmat__tensor_free_data(&s->part[1]);
    wmat__free(s);
}

static int part_ok(const wmat_tensor *t, int64_t rows, int64_t cols)
{
    const wmat_wkind *k = wmat__wkind_of(t);
    return k && t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols;
}

int wmat__sum_create(wmat_tensor *A, wmat_tensor *B, void **out)
{
    *out = NULL;
    const int64_t rows = A->shape[0], cols = A->shape[1];
    if (!part_ok(A, rows, cols) || !part_ok(B, rows, cols))
        return wmat_set_error(WMAT_ERR_INVALID, "sum: the parts must be weights of one (%lld x %lld) shape", (long long)rows,
                              (long long)cols);
    sumw *s = wmat__calloc(1, sizeof *s);
    if (!s) return wmat_set_error(WMAT_ERR_NOMEM, "sum: out of memory");
    s->obj.kind = &wmat__wkind_sum;
    s->part[0] = *A;
    s->part[1] = *B;
    snprintf(s->part[0].name, sizeof s->part[0].name, "a");
    snprintf(s->part[1].name, sizeof s->part[1].name, "b");
    memset(A, 0, sizeof *A);
    memset(B, 0, sizeof *B);
    *out = s;
    return WMAT_OK;
}

const wmat_tensor *wmat__sum_part(const wmat_tensor *W, int i) { return &sum_of(W)->part[i ? 1 : 0]; }

static int sum_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    sumw *s = (sumw *)sum_of(W); /* the suffix strings live in the object, as long as the parts */
    int n = 0;
    for (int i = 0; i < 2; i++) {
        const wmat_tensor *t = &s->part[i];
        const wmat_wkind *k = kind_at(s, i);
        cJSON *d = cJSON_AddObjectToObject(desc, k_tag[i]);
        if (!d || !cJSON_AddStringToObject(d, "kind", k->name)) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        wmat_wpart sub[WMAT_WPART_MAX];
        int ns = 0;
        if (k->save) {
            int rc = k->save(t, d, sub, &ns, what);
            if (rc) return rc;
        } else {
            sub[ns++] = (wmat_wpart){".blocks", WMAT_U8, 2,
                                     {t->shape[0], (int64_t)wmat_dtype_bytes(t->dtype, (uint64_t)t->shape[1])}, t->data};
        }
        if (n + ns > WMAT_WPART_MAX) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: the parts have too many arrays", what);
        for (int j = 0; j < ns; j++) {
            snprintf(s->suffix[i][j], sizeof s->suffix[i][j], ".%s%s", k_tag[i], sub[j].suffix);
            parts[n] = sub[j];
            parts[n++].suffix = s->suffix[i][j];
        }
    }
    *n_parts = n;
    return WMAT_OK;
}

typedef struct {
    wmat_wpart_get_fn get;
    void *user;
    const char *tag;
} prefixed;

static int get_prefixed(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    const prefixed *p = user;
    char full[64];
    snprintf(full, sizeof full, ".%s%s", p->tag, suffix);
    return p->get(p->user, full, dtype, ndim, d0, d1, data);
}

static int sum_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                    void **obj)
{
    *obj = NULL;
    wmat_tensor part[2];
    memset(part, 0, sizeof part);
    int rc = WMAT_OK;
    for (int i = 0; i < 2 && !rc; i++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(desc, k_tag[i]);
        const cJSON *kj = cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, "kind") : NULL;
        const wmat_wkind *k = cJSON_IsString(kj) ? wmat__wkind_find(kj->valuestring) : NULL;
        if (!k) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: part \"%s\" needs a known \"kind\"", what, k_tag[i]);
            break;
        }
        prefixed px = {get, user, k_tag[i]};
        if (k->dtype != WMAT_OBJ) {
            const size_t rb = wmat_dtype_bytes(k->dtype, (uint64_t)cols);
            const void *data;
            if (!rb) rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: %lld columns do not fit %s", what, (long long)cols, k->name);
            if (!rc) rc = get_prefixed(&px, ".blocks", WMAT_U8, 2, rows, (int64_t)rb, &data);
            if (!rc && (uintptr_t)data % 4)
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: part \"%s\" is not aligned", what, k_tag[i]);
            if (!rc) wmat__tensor_init2(&part[i], k->dtype, rows, cols, (void *)data);
            continue;
        }
        if (k == &wmat__wkind_sum || !k->load) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: part \"%s\" cannot be a %s", what, k_tag[i], k->name);
            break;
        }
        void *o = NULL;
        if (!(rc = k->load(d, rows, cols, get_prefixed, &px, what, &o))) wmat__tensor_own_obj(&part[i], rows, cols, o);
    }
    if (!rc) rc = wmat__sum_create(&part[0], &part[1], obj);
    if (rc) {
        wmat__tensor_free_data(&part[0]);
        wmat__tensor_free_data(&part[1]);
    }
    return rc;
}

/* q4_0 of W (or f16 when the width is no multiple of 32) plus the exact
 * low-rank form of the residual: W to float precision, both parts' paths. */
static int sum_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const wmat_wkind *qa = wmat__wkind_find(cols % 32 ? "f16" : "q4_0"), *lr = wmat__wkind_find("lowrank");
    wmat_tensor A, B;
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    float *E = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    int rc = E ? qa->from_f32(W, rows, cols, &A) : wmat_set_error(WMAT_ERR_NOMEM, "sum: out of memory");
    if (!rc) {
        qa->dequant_rows(&A, 0, rows, E);
        for (int64_t i = 0; i < rows * cols; i++) E[i] = W[i] - E[i];
        rc = lr->from_f32(E, rows, cols, &B);
    }
    void *obj = NULL;
    if (!rc) rc = wmat__sum_create(&A, &B, &obj);
    wmat__free(E);
    if (rc) {
        wmat__tensor_free_data(&A);
        wmat__tensor_free_data(&B);
        return rc;
    }
    wmat__tensor_own_obj(out, rows, cols, obj);
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_sum = {
    .name = "sum",
    .summary = "W = A + B of two weights of any kinds (quantized + low-rank, sparse + low-rank)",
    .dtype = WMAT_OBJ,
    .row_align = 16, /* a multiple of every registered kind's alignment */
    .ws_bytes = sum_ws,
    .forward = sum_forward,
    .backward = sum_backward,
    .prep_bytes = sum_prep_bytes,
    .prepare = sum_prepare,
    .rows = sum_rows,
    .dequant_rows = sum_dequant,
    .nbytes = sum_nbytes,
    .describe = sum_describe,
    .free = sum_free,
    .save = sum_save,
    .load = sum_load,
    .from_f32 = sum_from_f32,
    .row_tol = 2e-2f, /* the quantized part's one-row path (int8 activations) */
};
