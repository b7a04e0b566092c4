/* Gradient buckets over a communicator (dp.h). */
#include "dp.h"

#include <string.h>

struct wmat__dp {
    const wmat_comm *comm;
    float *g;
    size_t n;
    wmat__dp_bucket *b;
    int nb;
    int armed, fixed;
    wmat__comm_pending *pend;
    float *scratch; /* fixed: the peer's sums */
};

int wmat__dp_create(wmat__dp **out, const wmat_comm *c, float *grads, size_t n, const wmat__dp_bucket *b, int nb,
                    int fixed)
{
    *out = NULL;
    size_t prev = 0, chunks = 0;
    for (int i = 0; i < nb; i++) {
        if (b[i].lo < prev || b[i].hi < b[i].lo || b[i].hi > n)
            return wmat_set_error(WMAT_ERR_INTERNAL, "train: gradient bucket %d [%zu, %zu) out of order", i, b[i].lo, b[i].hi);
        prev = b[i].hi;
        chunks += wmat__comm_chunks(b[i].hi - b[i].lo);
    }
    wmat__dp *d = wmat__calloc(1, sizeof *d);
    if (!d) return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
    d->comm = c;
    d->g = grads;
    d->n = n;
    d->nb = nb;
    d->fixed = fixed;
    d->b = wmat__calloc(nb > 0 ? (size_t)nb : 1, sizeof *d->b);
    if (fixed) d->scratch = wmat__malloc((n ? n : 1) * sizeof(float));
    int rc = d->b && (!fixed || d->scratch)
                 ? WMAT_OK
                 : wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the gradient reduction (%zu floats)", n);
    if (!rc) rc = wmat__comm_pending_create(&d->pend, (int)chunks);
    if (rc) {
        wmat__dp_free(d);
        return rc;
    }
    if (nb) memcpy(d->b, b, (size_t)nb * sizeof *b);
    *out = d;
    return WMAT_OK;
}

void wmat__dp_free(wmat__dp *d)
{
    if (!d) return;
    wmat__comm_pending_free(d->pend);
    wmat__free(d->b);
    wmat__free(d->scratch);
    wmat__free(d);
}

void wmat__dp_arm(wmat__dp *d, int on) { d->armed = on && !d->fixed; }

int wmat__dp_layer_done(wmat__dp *d, int l)
{
    if (!d->armed) return WMAT_OK;
    wmat__comm_progress(d->pend);
    for (int i = 0; i < d->nb; i++)
        if (d->b[i].layer == l) {
            int rc = wmat__comm_iallreduce_sum_f32(d->comm, d->g + d->b[i].lo, d->b[i].hi - d->b[i].lo, d->pend);
            if (rc) return rc;
        }
    return WMAT_OK;
}

int wmat__dp_finish(wmat__dp *d, double *loss)
{
    d->armed = 0;
    int rc;
    if (d->fixed) {
        double sc;
        if ((rc = wmat__comm_tree_sum(d->comm, d->g, d->n, WMAT_COMM_F32, d->scratch))) return rc;
        return wmat__comm_tree_sum(d->comm, loss, 1, WMAT_COMM_F64, &sc);
    }
    if ((rc = wmat__comm_wait(d->pend))) return rc;
    /* the gaps between buckets, in arena order */
    size_t at = 0;
    for (int i = 0; i <= d->nb; i++) {
        const size_t lo = i < d->nb ? d->b[i].lo : d->n;
        if (lo > at && (rc = wmat__comm_allreduce(d->comm, d->g + at, lo - at, WMAT_COMM_F32, WMAT_COMM_SUM))) return rc;
        if (i < d->nb) at = d->b[i].hi;
    }
    return wmat__comm_allreduce(d->comm, loss, 1, WMAT_COMM_F64, WMAT_COMM_SUM);
}

void wmat__dp_tree_f32(float *a, int k, size_t n, int nt)
{
    for (int w = 1; w < k; w *= 2)
        for (int i = 0; i + w < k; i += 2 * w) {
            float *x = a + (size_t)i * n;
            const float *y = a + (size_t)(i + w) * n;
#pragma omp parallel for num_threads(nt) schedule(static)
            for (size_t j = 0; j < n; j++) x[j] += y[j];
        }
}

void wmat__dp_tree_f64(double *a, int k)
{
    for (int w = 1; w < k; w *= 2)
        for (int i = 0; i + w < k; i += 2 * w) a[i] += a[i + w];
}
