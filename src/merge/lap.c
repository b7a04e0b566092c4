/* The linear assignment problem: max over permutations p of sum_i C[i][p[i]]
 * (weight matching's inner step, docs/MERGING.md).
 *
 * The shortest-augmenting-path Hungarian algorithm with row and column
 * potentials (Jonker-Volgenant's formulation without their initialization
 * heuristics), run on -C: rows are added one at a time and each is
 * connected by a Dijkstra-like scan over the reduced costs
 * c(i, j) - u[i] - v[j] >= 0, which the potentials keep non-negative, so a
 * row costs O(n^2) and the whole solve O(n^3). Ties need no special care:
 * any optimum is returned, and the tests hold its value to the brute-force
 * maximum. */
#include "merge/align.h"

#include <math.h>
#include <string.h>

size_t wmat__lap_ws_bytes(int n)
{
    if (n < 0) return 0;
    const size_t m = (size_t)n + 1;
    return 3 * m * sizeof(double) + 2 * m * sizeof(int) + m;
}

int wmat__lap_max(const double *C, int n, int *perm, double *value, void *ws)
{
    if (n < 0 || (n > 0 && (!C || !perm))) return wmat_set_error(WMAT_ERR_INVALID, "lap: bad arguments (n %d)", n);
    for (int64_t k = 0; k < (int64_t)n * n; k++)
        if (!isfinite(C[k]))
            return wmat_set_error(WMAT_ERR_NUMERIC, "lap: cost [%lld][%lld] is not finite", (long long)(k / n), (long long)(k % n));
    if (value) *value = 0;
    if (n == 0) return WMAT_OK;
    void *own = NULL;
    if (!ws) {
        own = wmat__malloc(wmat__lap_ws_bytes(n));
        if (!own) return wmat_set_error(WMAT_ERR_NOMEM, "lap: out of memory (n %d)", n);
        ws = own;
    }
    const int m = n + 1;
    /* index 0 is the virtual column the row being added starts from */
    double *u = ws, *v = u + m, *minv = v + m;
    int *p = (int *)(minv + m), *way = p + m;
    unsigned char *used = (unsigned char *)(way + m);
    for (int j = 0; j < m; j++) {
        u[j] = v[j] = 0;
        p[j] = way[j] = 0;
    }
    for (int i = 1; i <= n; i++) {
        p[0] = i;
        int j0 = 0;
        for (int j = 0; j < m; j++) {
            minv[j] = INFINITY;
            used[j] = 0;
        }
        do {
            used[j0] = 1;
            const int i0 = p[j0];
            const double *row = C + (size_t)(i0 - 1) * (size_t)n;
            double delta = INFINITY;
            int j1 = -1;
            for (int j = 1; j <= n; j++) {
                if (used[j]) continue;
                const double cur = -row[j - 1] - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (j1 < 0 || minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for (int j = 0; j <= n; j++) {
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
        } while (p[j0] != 0);
        do { /* flip the augmenting path back to the virtual column */
            const int j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    double val = 0;
    for (int j = 1; j <= n; j++) {
        perm[p[j] - 1] = j - 1;
        val += C[(size_t)(p[j] - 1) * (size_t)n + (size_t)(j - 1)];
    }
    if (value) *value = val;
    wmat__free(own);
    return WMAT_OK;
}
