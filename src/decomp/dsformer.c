/* DSFormer post hoc (SPECS H6): W ~ D S with D dense (rows, k) and S (k,
 * cols) holding s entries per column, started from the truncated SVD as the
 * paper's factorizer is: D = U_k Sigma_k, S = V_k^T with all but the s
 * largest |entries| of each column set to zero. With refit, D is then the
 * least-squares answer for that S, D = W S^T (S S^T)^-1, which can only
 * lower ||W - D S||_F. The trained version (straight-through top-s on the
 * LM loss) is the trainer's `dsformer` adapter; both write the `dsf` kind.
 *
 * Sizes count what is stored: D and the values in the factor dtype, one
 * index byte per entry while k <= 256 (two above). With compression = R the
 * largest k whose size is at most dense / R is taken (s = nnz, or
 * ceil(nnz_share k)), dense meaning rows x cols in the same dtype. */
#include "decomp.h"

#include "linalg/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const wmat_param_spec wmat__dsformer_keys[] = {
    {"rank", WMAT_PARAM_INT, "0", 0, 1 << 30, NULL,
     "dsformer: k, the columns of D (at most min(rows, cols)); 0: from compression", NULL},
    {"nnz", WMAT_PARAM_INT, "0", 0, 1 << 30, NULL, "dsformer: s, the entries kept in every column of S (1..k); 0: nnz_share", NULL},
    {"nnz_share", WMAT_PARAM_FLOAT, "0.5", 0, 1, NULL, "dsformer: s = ceil(nnz_share k) when nnz is 0", NULL},
    {"compression", WMAT_PARAM_FLOAT, "0", 0, 1000, NULL,
     "dsformer: dense size / stored size (index bytes counted) that picks k when rank is 0", NULL},
    {"refit", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "dsformer: refit D by least squares given the mask", "no_refit"},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__decomp_dsformer_check(const wmat_pset *ps, int global)
{
    (void)global;
    const int64_t k = wmat__pset_int(ps, "rank"), s = wmat__pset_int(ps, "nnz");
    const double comp = wmat__pset_float(ps, "compression"), share = wmat__pset_float(ps, "nnz_share");
    if (k == 0 && !(comp > 1))
        return wmat_set_error(WMAT_ERR_INVALID, "dsformer: give rank=k > 0 or compression > 1 (dense size / stored size)");
    if (k > 0 && s > k)
        return wmat_set_error(WMAT_ERR_INVALID, "dsformer: nnz=%lld is more than rank=%lld (s entries of a k-row column)",
                              (long long)s, (long long)k);
    if (s == 0 && !(share > 0))
        return wmat_set_error(WMAT_ERR_INVALID, "dsformer: nnz=0 needs nnz_share in (0, 1]");
    return WMAT_OK;
}

static int64_t s_for(int64_t k, int64_t nnz, double share)
{
    int64_t s = nnz > 0 ? nnz : (int64_t)ceil(share * (double)k - 1e-9);
    if (s < 1) s = 1;
    return s > k ? k : s;
}

uint64_t wmat__dsformer_bytes(int64_t rows, int64_t cols, int64_t k, int64_t s, wmat_dtype dt)
{
    const uint64_t es = dt == WMAT_F16 ? 2 : 4, iw = k <= 256 ? 1 : 2;
    return (uint64_t)(rows * k) * es + (uint64_t)(cols * s) * (iw + es);
}

/* Order of entries within a column: larger |v| first, then the lower row. */
typedef struct {
    float a;
    int32_t j;
} mag;

static int mag_cmp(const void *x, const void *y)
{
    const mag *p = x, *q = y;
    if (p->a != q->a) return p->a > q->a ? -1 : 1;
    return (p->j > q->j) - (p->j < q->j);
}

void wmat__dsformer_tops(const float *S, int64_t k, int64_t cols, int64_t s, int32_t *idx, void *work)
{
    mag *m = work;
    for (int64_t c = 0; c < cols; c++) {
        for (int64_t j = 0; j < k; j++) {
            const float v = fabsf(S[j * cols + c]);
            m[j] = (mag){v == v ? v : INFINITY, (int32_t)j}; /* a NaN is kept, so it shows */
        }
        qsort(m, (size_t)k, sizeof *m, mag_cmp);
        for (int64_t q = 0; q < s; q++) idx[c * s + q] = m[q].j;
    }
}

size_t wmat__dsformer_tops_work(int64_t k) { return (size_t)k * sizeof(mag); }

int wmat__dsformer_init(const float *W, int64_t rows, int64_t cols, int64_t k, int64_t s, int refit, float *D, float *Vt)
{
    const int64_t mn = rows < cols ? rows : cols;
    if (k < 1 || k > mn || s < 1 || s > k)
        return wmat_set_error(WMAT_ERR_INVALID, "dsformer: k=%lld, s=%lld for a (%lld x %lld) matrix (1 <= s <= k <= %lld)",
                              (long long)k, (long long)s, (long long)rows, (long long)cols, (long long)mn);
    if (rows > INT32_MAX / 2 || cols > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "dsformer: a (%lld x %lld) matrix is too large", (long long)rows,
                              (long long)cols);
    double *A = wmat__malloc((size_t)(rows * cols) * sizeof(double));
    double *U = wmat__malloc((size_t)(rows * mn) * sizeof(double));
    double *VT = wmat__malloc((size_t)(mn * cols) * sizeof(double));
    double *sv = wmat__malloc((size_t)mn * sizeof(double));
    double *Sd = wmat__calloc((size_t)(k * cols), sizeof(double)); /* the masked S, dense */
    double *G = wmat__malloc((size_t)(k * k) * sizeof(double));
    double *WS = wmat__malloc((size_t)(rows * k) * sizeof(double));
    int32_t *idx = wmat__malloc((size_t)(cols * s) * sizeof(int32_t));
    void *work = wmat__malloc(wmat__dsformer_tops_work(k));
    int rc = WMAT_OK;
    if (!A || !U || !VT || !sv || !Sd || !G || !WS || !idx || !work) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "dsformer: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    for (int64_t i = 0; i < rows * cols; i++) A[i] = W[i];
    if ((rc = wmat__dgesdd((int)rows, (int)cols, A, (int)cols, sv, U, (int)mn, VT, (int)cols))) goto done;
    for (int64_t j = 0; j < k * cols; j++) Vt[j] = (float)VT[j];
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < k; j++) D[i * k + j] = (float)(U[i * mn + j] * sv[j]);
    if (!refit) goto done;
    /* D = W S^T (S S^T)^-1 for the masked S (as stored: float), with a
     * ridge of 1e-12 trace / k against a row the mask emptied; a G that is
     * still not positive definite keeps the SVD's D */
    wmat__dsformer_tops(Vt, k, cols, s, idx, work);
    for (int64_t c = 0; c < cols; c++)
        for (int64_t q = 0; q < s; q++) Sd[(int64_t)idx[c * s + q] * cols + c] = Vt[(int64_t)idx[c * s + q] * cols + c];
    for (int64_t i = 0; i < rows * cols; i++) A[i] = W[i]; /* dgesdd destroyed it */
    if ((rc = wmat__dgemm(0, 1, (int)k, (int)k, (int)cols, 1.0, Sd, (int)cols, Sd, (int)cols, 0.0, G, (int)k)) ||
        (rc = wmat__dgemm(0, 1, (int)rows, (int)k, (int)cols, 1.0, A, (int)cols, Sd, (int)cols, 0.0, WS, (int)k)))
        goto done;
    double tr = 0;
    for (int64_t j = 0; j < k; j++) tr += G[j * k + j];
    for (int64_t j = 0; j < k; j++) G[j * k + j] += 1e-12 * (tr > 0 ? tr : 1) / (double)k;
    if (wmat__dpotrf_upper((int)k, G, (int)k) || wmat__dpotri_upper((int)k, G, (int)k)) {
        wmat_clear_error();
        goto done;
    }
    for (int64_t a = 0; a < k; a++)
        for (int64_t b = 0; b < a; b++) G[a * k + b] = G[b * k + a];
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < k; j++) {
            double acc = 0;
            for (int64_t p = 0; p < k; p++) acc += WS[i * k + p] * G[p * k + j];
            D[i * k + j] = (float)acc;
        }
done:
    wmat__free(A);
    wmat__free(U);
    wmat__free(VT);
    wmat__free(sv);
    wmat__free(Sd);
    wmat__free(G);
    wmat__free(WS);
    wmat__free(idx);
    wmat__free(work);
    return rc;
}

int wmat__dsformer_factor(const float *W, int64_t rows, int64_t cols, int64_t k, int64_t s, int refit, wmat_dtype dt,
                          wmat_tensor *out, double *rel_error)
{
    float *D = wmat__malloc((size_t)(rows * k) * sizeof(float));
    float *Vt = wmat__malloc((size_t)(k * cols) * sizeof(float));
    int32_t *idx = wmat__malloc((size_t)(cols * s) * sizeof(int32_t));
    float *val = wmat__malloc((size_t)(cols * s) * sizeof(float));
    void *work = wmat__malloc(wmat__dsformer_tops_work(k));
    float *R = wmat__malloc((size_t)cols * sizeof(float));
    int rc = WMAT_OK;
    if (!D || !Vt || !idx || !val || !work || !R) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "dsformer: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    if ((rc = wmat__dsformer_init(W, rows, cols, k, s, refit, D, Vt))) goto done;
    wmat__dsformer_tops(Vt, k, cols, s, idx, work);
    for (int64_t c = 0; c < cols; c++)
        for (int64_t q = 0; q < s; q++) val[c * s + q] = Vt[(int64_t)idx[c * s + q] * cols + c];
    void *obj = NULL;
    if ((rc = wmat__dsf_create(dt, rows, cols, k, s, D, idx, val, &obj))) goto done;
    wmat__tensor_own_obj(out, rows, cols, obj);
    if (rel_error) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < rows; i++) {
            wmat__wkind_of(out)->dequant_rows(out, i, 1, R);
            for (int64_t c = 0; c < cols; c++) {
                const double d = (double)W[i * cols + c] - R[c];
                num += d * d;
                den += (double)W[i * cols + c] * W[i * cols + c];
            }
        }
        *rel_error = den > 0 ? sqrt(num / den) : sqrt(num);
    }
done:
    wmat__free(D);
    wmat__free(Vt);
    wmat__free(idx);
    wmat__free(val);
    wmat__free(work);
    wmat__free(R);
    return rc;
}

int wmat__decomp_dsformer(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                          wmat_tensor *out, int64_t *rank_out, double *rel_error)
{
    const int64_t mn = rows < cols ? rows : cols;
    int64_t k = wmat__pset_int(ps, "rank");
    const int64_t nnz = wmat__pset_int(ps, "nnz");
    const double share = wmat__pset_float(ps, "nnz_share"), comp = wmat__pset_float(ps, "compression");
    if (dtype != WMAT_F32 && dtype != WMAT_F16)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "dsformer: factors are f32 or f16, not %s", wmat_dtype_info(dtype)->name);
    if (k == 0) {
        /* the largest k within the budget (sizes grow with k) */
        const double budget = (double)rows * (double)cols * (dtype == WMAT_F16 ? 2 : 4) / comp;
        for (int64_t kk = 1; kk <= mn; kk++)
            if ((double)wmat__dsformer_bytes(rows, cols, kk, s_for(kk, nnz, share), dtype) <= budget) k = kk;
        if (k == 0)
            return wmat_set_error(WMAT_ERR_INVALID, "dsformer: compression %g leaves no k for a (%lld x %lld) matrix", comp,
                                  (long long)rows, (long long)cols);
    }
    if (k > mn) k = mn;
    const int64_t s = s_for(k, nnz, share);
    *rank_out = k;
    return wmat__dsformer_factor(W, rows, cols, k, s, (int)wmat__pset_int(ps, "refit"), dtype, out, rel_error);
}
