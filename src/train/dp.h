/* Data-parallel training (docs/SCALING.md): the gradient arena summed over
 * the ranks of a communicator, in buckets of one layer each, each bucket's
 * reduction started (MPI_Iallreduce) as soon as the backward has finished
 * that layer in the step's last micro-batch, so that layers L-1 .. 1 are
 * reduced while the backward of the layers below them runs. What no
 * bucket covers (embedding, final norm, classifier: their gradients are
 * final only at the end of the backward) is summed last, blocking. */
#ifndef WMAT_TRAIN_DP_H
#define WMAT_TRAIN_DP_H

#include "../core/comm.h"
#include "../core/internal.h"

typedef struct {
    size_t lo, hi; /* floats [lo, hi) of the gradient arena */
    int layer;     /* final once the backward of this layer is done */
} wmat__dp_bucket;

typedef struct wmat__dp wmat__dp;

/* buckets sorted by lo, disjoint, inside [0, n); copied. fixed: the
 * fixed-order sum (wmat__comm_tree_sum) at the end instead of buckets. */
int wmat__dp_create(wmat__dp **out, const wmat_comm *c, float *grads, size_t n, const wmat__dp_bucket *b, int nb,
                    int fixed);
void wmat__dp_free(wmat__dp *d);
/* on: the coming backward is the step's last (its layers' gradients are final). */
void wmat__dp_arm(wmat__dp *d, int on);
/* The backward of layer l is done: start its buckets' reductions (armed),
 * or let those in flight progress. */
int wmat__dp_layer_done(wmat__dp *d, int l);
/* Wait for the buckets, then sum the rest, and *loss: every rank then
 * holds the sums. */
int wmat__dp_finish(wmat__dp *d, double *loss);

/* In place, the pairwise tree over k buffers of n (k a power of two):
 * a[0] = (a[0] + a[1]) + (a[2] + a[3]) ..., the order the ranks' fixed
 * sum continues above. */
void wmat__dp_tree_f32(float *a, int k, size_t n, int nt);
void wmat__dp_tree_f64(double *a, int k);

#endif
