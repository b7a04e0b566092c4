/* Data-parallel calibration (methods.h; docs/SCALING.md). Each rank keeps
 * the residual streams of its own contiguous share of the calibration
 * windows and accumulates statistics over them only; where a stage's sums
 * are complete (wmat__calib_collect, before the division by the token
 * count) they are summed over the ranks, so every rank goes on with the
 * statistics of all windows and quantizes exactly as one process would.
 *
 * Why the result is the one-process result bit for bit in practice: H is
 * summed in double from float per-window products X^T X (calib.c), and a
 * sum of floats in double is exact, hence the same in any order, while
 * the addends of one entry lie within 2^(53-24-log2(windows)) of each
 * other in magnitude; only an entry whose per-window values differ by more
 * than ~2^25 could round differently between the sequential sum and the
 * rank-split one. x2 (sums of squares in double) is not exact and may
 * differ in its last bits; GPTQ does not read it. absmax is a maximum,
 * exact in any order. */
#include "methods.h"

#include "../core/comm.h"

int wmat__calib_share(const wmat_comm *c, int n_windows, int *w0, int *nw)
{
    const int size = wmat_comm_size(c), rank = wmat_comm_rank(c);
    if (size == 1) {
        *w0 = 0;
        *nw = n_windows;
        return WMAT_OK;
    }
    if (n_windows < size)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "calibration: %d windows cannot be split over %d ranks (give at least one window per "
                              "rank: more --calib-tokens or a shorter --calib-ctx)",
                              n_windows, size);
    const int q = n_windows / size, r = n_windows % size;
    *w0 = rank * q + (rank < r ? rank : r);
    *nw = q + (rank < r);
    return WMAT_OK;
}

int wmat__calib_reduce(const wmat_context *ctx, wmat_qstats **slots, unsigned want)
{
    const wmat_comm *c = ctx ? ctx->comm : NULL;
    if (wmat_comm_size(c) == 1) return WMAT_OK;
    /* every rank has the same slots (the same model and settings) */
    for (int s = 0; s < WMAT_CSLOT_COUNT; s++) {
        wmat_qstats *q = slots[s];
        if (!(want >> s & 1u) || !q) continue;
        const size_t n = (size_t)q->n;
        int rc = wmat__comm_allreduce(c, &q->n_tokens, 1, WMAT_COMM_U64, WMAT_COMM_SUM);
        if (!rc && q->H) rc = wmat__comm_allreduce(c, q->H, n * n, WMAT_COMM_F64, WMAT_COMM_SUM);
        if (!rc) rc = wmat__comm_allreduce(c, q->x2, n, WMAT_COMM_F64, WMAT_COMM_SUM);
        if (!rc) rc = wmat__comm_allreduce(c, q->absmax, n, WMAT_COMM_F32, WMAT_COMM_MAX);
        /* a minimum: the maximum of the negated values */
        for (size_t j = 0; j < n && !rc; j++) q->wmaxmin[j] = -q->wmaxmin[j];
        if (!rc) rc = wmat__comm_allreduce(c, q->wmaxmin, n, WMAT_COMM_F32, WMAT_COMM_MAX);
        for (size_t j = 0; j < n && !rc; j++) q->wmaxmin[j] = -q->wmaxmin[j];
        if (rc) return rc;
    }
    return WMAT_OK;
}
