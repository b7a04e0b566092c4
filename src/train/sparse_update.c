/* The shared piece of SaRA and PST (sparse_update.h): selection of the
 * smallest keys, the nuclear norm's subgradient. */
#include "sparse_update.h"

#include "../linalg/linalg.h"
#include "../linalg/linalg_train.h"

#include <math.h>
#include <string.h>

size_t wmat__su_count(double share, size_t n)
{
    if (!(share > 0)) return 0;
    const double k = floor(share * (double)n);
    return k >= (double)n ? n : (size_t)k;
}

static void swapf(float *a, float *b)
{
    const float t = *a;
    *a = *b;
    *b = t;
}

static float median3(float x, float y, float z)
{
    if (x > y) swapf(&x, &y);
    if (y > z) swapf(&y, &z);
    if (x > y) swapf(&x, &y);
    return y;
}

/* The k-th smallest (0-based) of a[0..n), reordering a: quickselect with a
 * median-of-three pivot and a three-way partition (many equal keys, e.g.
 * the zeros of a pruned matrix, stay linear). */
static float kth_smallest(float *a, size_t n, size_t k)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1;
    const ptrdiff_t kk = (ptrdiff_t)k;
    while (lo < hi) {
        const float p = median3(a[lo], a[lo + (hi - lo) / 2], a[hi]);
        ptrdiff_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            if (a[i] < p)
                swapf(&a[lt++], &a[i++]);
            else if (a[i] > p)
                swapf(&a[i], &a[gt--]);
            else
                i++;
        }
        /* a[lo, lt) < p, a[lt, gt] == p, a(gt, hi] > p */
        if (kk < lt)
            hi = lt - 1;
        else if (kk > gt)
            lo = gt + 1;
        else
            return p;
    }
    return a[kk];
}

void wmat__su_select_smallest(const float *key, size_t n, size_t k, unsigned char *sel, float *tmp)
{
    if (k == 0 || k >= n) {
        memset(sel, k ? 1 : 0, n);
        return;
    }
    memcpy(tmp, key, n * sizeof(float));
    const float t = kth_smallest(tmp, n, k - 1);
    size_t taken = 0;
    for (size_t i = 0; i < n; i++) {
        sel[i] = key[i] < t;
        taken += sel[i];
    }
    for (size_t i = 0; i < n && taken < k; i++)
        if (key[i] == t) {
            sel[i] = 1;
            taken++;
        }
}

/* ------------------------------------------------------------ nuclear norm */

int wmat__su_nuclear(const float *D, int rows, int cols, float *G, double *norm)
{
    const int k = rows < cols ? rows : cols;
    const size_t n = (size_t)rows * cols;
    float *A = wmat__malloc((n + (size_t)k + (size_t)rows * k + (size_t)k * cols) * sizeof(float) + 1);
    if (!A) return wmat_set_error(WMAT_ERR_NOMEM, "nuclear norm: out of memory");
    float *S = A + n, *U = S + k, *VT = U + (size_t)rows * k;
    memcpy(A, D, n * sizeof(float));
    int rc = wmat__train_svd_thin(rows, cols, A, cols, S, U, k, VT, cols);
    if (rc) {
        wmat__free(A);
        return rc;
    }
    double s = 0;
    int m = 0;
    const float tol = 1e-6f * (k ? S[0] : 0.0f);
    for (int i = 0; i < k; i++) {
        s += S[i];
        if (S[i] > tol && S[i] > 0.0f) m = i + 1; /* descending: the first m */
    }
    *norm = s;
    if (G) {
        if (m > 0)
            wmat_sgemm(0, 0, rows, cols, m, 1.0f, U, k, VT, cols, 0.0f, G, cols); /* U_m V_m^T */
        else
            memset(G, 0, n * sizeof(float));
    }
    wmat__free(A);
    return WMAT_OK;
}
